"""A small GPT (decoder-only Transformer) for the character-level LM studies.

Pre-norm blocks: x + attn(LN(x)), then x + mlp(LN(x)); a final LayerNorm and
a linear head to the vocabulary. Options: ``n_layer``, ``n_head``,
``n_embd``, ``positions`` ("learned": an added position embedding; "rotary":
rotary embeddings on queries and keys, rotate-half form, no parameters),
``tie_embeddings`` (the head's weight is the token embedding), ``qk_layernorm``
(a LayerNorm over the head dimension on queries and keys, shared by the
heads; Wortsman et al., arXiv 2309.14322), ``bias`` (in linear layers and
LayerNorms; the head never has one), ``mlp_ratio`` (hidden width / n_embd).
Attention is ``F.scaled_dot_product_attention`` with ``is_causal=True``.

Input: token ids (B, T), T <= block_size; output: logits (B, T, vocab). The
z-loss of the studies is the loss's business: the log-partition penalty of
``descentlab.losses`` (``{"name": "log_partition_penalty", "base":
"cross_entropy", "coefficient": 1e-4}``) on these logits, flattened over tokens.

Initialisation as GPT-2: weights N(0, 0.02), the residual output projections
N(0, 0.02 / sqrt(2 n_layer)), biases 0, LayerNorms 1/0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import MODELS

POSITIONS = ("learned", "rotary")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    positions: str = "learned"
    tie_embeddings: bool = True
    qk_layernorm: bool = False
    bias: bool = False
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"gpt: {name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"gpt: n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.positions not in POSITIONS:
            raise ValueError(f"gpt: positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"gpt: rotary positions need an even head dimension, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def rotary_tables(block_size: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (block_size, head_dim): frequency base^(-2i/head_dim) on both halves."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i + d/2}) of (B, H, T, d) by position-dependent angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.q_norm = nn.LayerNorm(cfg.head_dim, bias=cfg.bias) if cfg.qk_layernorm else None
        self.k_norm = nn.LayerNorm(cfg.head_dim, bias=cfg.bias) if cfg.qk_layernorm else None

    def queries_keys_values(self, x: torch.Tensor, rotary) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, H, T, d), normalised and rotated as attention sees them."""
        B, T, C = x.shape
        # three (B, T, C) -> (B, H, T, d); split (not a permute of one (B, T, 3, H, d) view)
        # because its backward is one cat straight into the layout the matmul wants
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            cos, sin = rotary[0][:T], rotary[1][:T]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.queries_keys_values(x, rotary)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def max_logit(self, x: torch.Tensor, rotary) -> torch.Tensor:
        """The largest |q.k| / sqrt(d) over heads and causal (query, key) pairs: the
        attention logit whose growth Wortsman et al. (arXiv 2309.14322) track."""
        q, k, _ = self.queries_keys_values(x, rotary)
        logits = (q @ k.transpose(-1, -2)).abs() / math.sqrt(self.head_dim)
        T = x.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return logits.masked_fill(~causal, 0.0).amax()


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rotary) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), rotary)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.positions == "learned" else None
        if cfg.positions == "rotary":
            cos, sin = rotary_tables(cfg.block_size, cfg.head_dim)
            # not persistent: derived from the config, so not in state_dict nor counted
            self.register_buffer("rot_cos", cos, persistent=False)
            self.register_buffer("rot_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        # Tied: the head reads the token embedding in forward, no shared Parameter, so
        # copies of the module (functional_call, batched runs) cannot untie it.
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.cfg.n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self._forward(idx)[0]

    @torch.no_grad()
    def logit_growth(self, idx: torch.Tensor) -> dict[str, float]:
        """The two logit growths Wortsman et al. (arXiv 2309.14322) tie to
        instability: ``max_attention_logit`` (the largest |q.k| / sqrt(d) of any
        layer, head and causal pair) and ``mean_log_partition`` (the mean over
        tokens of log Z = logsumexp of the output logits; it drifts from 0 in
        output-logit divergence, which z-loss penalises)."""
        logits, attention = self._forward(idx, track_attention=True)
        return {"max_attention_logit": float(torch.stack(attention).amax()),
                "mean_log_partition": float(torch.logsumexp(logits.float(), dim=-1).mean())}

    def _forward(self, idx: torch.Tensor, track_attention: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if idx.ndim != 2:
            raise ValueError(f"gpt: input must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.cfg.block_size:
            raise ValueError(f"gpt: sequence of {T} tokens is longer than block_size {self.cfg.block_size}")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            # the whole table when T == block_size: a slice would cost a zero-fill and a copy in backward
            x = x + (self.pos_emb.weight if T == self.cfg.block_size else self.pos_emb.weight[:T])
        rotary = (self.rot_cos, self.rot_sin) if self.cfg.positions == "rotary" else None
        attention = []
        for block in self.blocks:
            if track_attention:
                attention.append(block.attn.max_logit(block.ln1(x), rotary))
            x = block(x, rotary)
        x = self.ln_f(x)
        return (F.linear(x, self.tok_emb.weight) if self.head is None else self.head(x)), attention

    # -- counts ---------------------------------------------------------------------------

    def num_params(self) -> int:
        """All parameters (a tied head has none of its own)."""
        return sum(p.numel() for p in self.parameters())

    def num_embedding_params(self) -> int:
        """Token and position embeddings, and an untied head: the vocabulary/position
        matrices that Kaplan et al.'s N leaves out."""
        n = self.tok_emb.weight.numel()
        if self.pos_emb is not None:
            n += self.pos_emb.weight.numel()
        if self.head is not None:
            n += self.head.weight.numel()
        return n

    def num_non_embedding_params(self) -> int:
        return self.num_params() - self.num_embedding_params()


def flops_per_token(cfg: GPTConfig, non_embedding_params: int, convention: str = "kaplan") -> float:
    """Training FLOPs (forward + backward) per token at context ``cfg.block_size``.

    "kaplan" (Kaplan et al. 2020, Table 1): 6 N + 6 n_layer n_ctx n_embd, with N
    the non-embedding parameters; embeddings, the head, norms, softmax left out.
    "chinchilla" (Hoffmann et al. 2022, Appendix F), 3x the forward per token:
    embedding 2 V d; per layer QKV 6 d^2, attention logits 2 T d, softmax
    3 H T, reduction 2 T d, output projection 2 d^2, MLP 4 r d^2; head 2 d V.
    Neither halves attention for the causal mask.
    """
    d, L, T, V, H = cfg.n_embd, cfg.n_layer, cfg.block_size, cfg.vocab_size, cfg.n_head
    if convention == "kaplan":
        return 6.0 * non_embedding_params + 6.0 * L * T * d
    if convention == "chinchilla":
        per_layer = 6 * d * d + 2 * T * d + 3 * H * T + 2 * T * d + 2 * d * d + 4 * cfg.mlp_ratio * d * d
        return 3.0 * (2 * V * d + L * per_layer + 2 * d * V)
    raise ValueError(f"flops_per_token: convention must be kaplan or chinchilla, got {convention!r}")


@MODELS.register("gpt")
def gpt(
    input_shape: Sequence[int],
    num_outputs: int,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    positions: str = "learned",
    tie_embeddings: bool = True,
    qk_layernorm: bool = False,
    bias: bool = False,
    mlp_ratio: int = 4,
) -> GPT:
    """A GPT over windows of ``input_shape == (block_size,)`` tokens, vocabulary ``num_outputs``."""
    if len(tuple(input_shape)) != 1:
        raise ValueError(f"gpt: input_shape must be (block_size,), got {tuple(input_shape)}")
    cfg = GPTConfig(vocab_size=int(num_outputs), block_size=int(input_shape[0]), n_layer=n_layer, n_head=n_head,
                    n_embd=n_embd, positions=positions, tie_embeddings=tie_embeddings,
                    qk_layernorm=qk_layernorm, bias=bias, mlp_ratio=mlp_ratio)
    return GPT(cfg)
