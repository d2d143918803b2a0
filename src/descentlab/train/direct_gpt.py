"""The forward pass of R stacked runs of the registry's ``GPT``, without ``vmap``.

``torch.vmap`` has no batching rule for ``scaled_dot_product_attention``: a
vmapped GPT falls back to a per-run loop with a warning and is slower than
training the runs one after another. Written out, the R runs are one
computation:

- token embeddings: one ``F.embedding`` over the (R*V, C) table, each run's
  ids offset into its own rows; learned positions added per run;
- ``Linear``: one ``baddbmm``/``bmm`` over the run dimension, activations
  (R, B*T, C);
- ``LayerNorm``: the normalisation without affine over every run at once, then
  each run's weight (and bias) broadcast along its rows (also qk-layernorm over
  the head dimension);
- attention: the runs folded into the batch, one
  ``F.scaled_dot_product_attention(is_causal=True)`` over (R*B, H, T, d);
  rotary tables are the config's, the same for every run;
- the head: the tied token embedding (or the untied head) as one ``bmm``.

Every option of ``GPTConfig`` is covered. The numbers are the module's own to
rounding; tests compare against each run's own ``GPT`` in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.gpt import GPT, GPTConfig, apply_rotary

__all__ = ["DirectGPT"]


class DirectGPT:
    """Outputs (R, B, T, vocab) of R runs of ``template``'s GPT architecture."""

    def __init__(self, template: GPT):
        if type(template) is not GPT:
            raise ValueError(f"DirectGPT: the model is a {type(template).__name__}, not the registry's GPT")
        self.cfg: GPTConfig = template.cfg
        self.eps = [(block.ln1.eps, block.ln2.eps) for block in template.blocks]
        self.final_eps = template.ln_f.eps
        self.qk_eps = template.blocks[0].attn.q_norm.eps if self.cfg.qk_layernorm else None

    def __call__(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], idx: torch.Tensor,
                 batched_x: bool, training: bool) -> torch.Tensor:
        """``params``/``buffers``: (R, *shape) by ``named_parameters`` names; ``idx``:
        (R, B, T) token ids when ``batched_x``, else (B, T), one batch for every run.
        ``training`` changes nothing (a GPT has no dropout nor batch statistics)."""
        cfg = self.cfg
        emb = params["tok_emb.weight"]  # (R, V, C)
        R, V, C = emb.shape
        if not batched_x:
            idx = idx.unsqueeze(0).expand(R, *idx.shape)
        if idx.ndim != 3:
            raise ValueError(f"gpt: input must be (batch, time) token ids per run, got shape {tuple(idx.shape)}")
        B, T = idx.shape[1:]
        if T > cfg.block_size:
            raise ValueError(f"gpt: sequence of {T} tokens is longer than block_size {cfg.block_size}")
        # each run's ids index its own rows of the (R*V, C) table
        offsets = (torch.arange(R, device=idx.device) * V).view(R, 1, 1)
        x = F.embedding(idx + offsets, emb.reshape(R * V, C))  # (R, B, T, C)
        if cfg.positions == "learned":
            pos = params["pos_emb.weight"]
            x = x + (pos if T == cfg.block_size else pos[:, :T]).unsqueeze(1)
        rotary = None
        if cfg.positions == "rotary":  # the config's tables, equal in every run
            rotary = (buffers["rot_cos"][0, :T], buffers["rot_sin"][0, :T])
        x = x.reshape(R, B * T, C)
        for i in range(cfg.n_layer):
            prefix = f"blocks.{i}."
            h = _layer_norm(x, params, prefix + "ln1", self.eps[i][0])
            x = x + self._attention(h, params, prefix + "attn.", rotary, R, B, T)
            h = _layer_norm(x, params, prefix + "ln2", self.eps[i][1])
            h = F.gelu(_linear(h, params, prefix + "mlp.fc"))
            x = x + _linear(h, params, prefix + "mlp.proj")
        x = _layer_norm(x, params, "ln_f", self.final_eps)
        head = emb if cfg.tie_embeddings else params["head.weight"]
        return torch.bmm(x, head.transpose(1, 2)).view(R, B, T, -1)

    def _attention(self, x: torch.Tensor, params: dict, prefix: str, rotary, R: int, B: int, T: int) -> torch.Tensor:
        """Causal self-attention of (R, B*T, C) activations, the runs folded into the batch."""
        cfg = self.cfg
        H, d, C = cfg.n_head, cfg.head_dim, cfg.n_embd
        qkv = _linear(x, params, prefix + "qkv")  # (R, B*T, 3C)
        q, k, v = (t.reshape(R * B, T, H, d).transpose(1, 2) for t in qkv.split(C, dim=2))  # (R*B, H, T, d)
        if self.qk_eps is not None:
            q = _layer_norm(q.reshape(R, B, H, T, d), params, prefix + "q_norm", self.qk_eps).reshape(R * B, H, T, d)
            k = _layer_norm(k.reshape(R, B, H, T, d), params, prefix + "k_norm", self.qk_eps).reshape(R * B, H, T, d)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (R*B, H, T, d)
        y = y.transpose(1, 2).reshape(R, B * T, C)
        return _linear(y, params, prefix + "proj")


def _linear(x: torch.Tensor, params: dict, name: str) -> torch.Tensor:
    """(R, N, in) @ each run's weight (R, out, in), plus its bias (R, out) if any."""
    w, b = params[f"{name}.weight"], params.get(f"{name}.bias")
    if b is None:
        return torch.bmm(x, w.transpose(1, 2))
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


def _layer_norm(x: torch.Tensor, params: dict, name: str, eps: float) -> torch.Tensor:
    """LayerNorm over the last dimension of (R, ...) with run r's weight/bias (R, F)."""
    w, b = params[f"{name}.weight"], params.get(f"{name}.bias")
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    normed = F.layer_norm(x, x.shape[-1:], eps=eps)
    if b is None:
        return normed * w.view(shape)
    return torch.addcmul(b.view(shape), normed, w.view(shape))
