"""The small GPT: hand-counted parameters and FLOPs, a float64 reference forward,
causality, and training through the project's loop on the char-LM data."""

import math
import warnings

import pandas as pd
import pytest
import torch

from descentlab.data import build_dataset
from descentlab.losses import build_loss
from descentlab.losses.sequence import PerTokenLoss
from descentlab.models import build_model
from descentlab.models.gpt import GPTConfig, flops_per_token
from descentlab.train import train_run

# A: learned positions, tied, no biases, no qk-layernorm.
A = dict(vocab=65, block=32, spec={"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 16})
# B: rotary, untied, biases, qk-layernorm, MLP ratio 2.
B = dict(vocab=50, block=8, spec={"name": "gpt", "n_layer": 1, "n_head": 4, "n_embd": 8, "positions": "rotary",
                                  "tie_embeddings": False, "bias": True, "qk_layernorm": True, "mlp_ratio": 2})


def make(cfg):
    torch.manual_seed(0)
    return build_model(cfg["spec"], (cfg["block"],), cfg["vocab"])


def test_parameter_counts_match_hand_counts():
    a = make(A)
    # A (V=65, T=32, d=16, L=2): token emb 65*16 = 1040, position emb 32*16 = 512;
    # per layer ln1 16 + qkv 3*16*16 = 768 + proj 256 + ln2 16 + fc 16*64 = 1024 + proj 1024 = 3104;
    # two layers 6208, final ln 16, tied head 0.
    assert a.num_params() == 1040 + 512 + 2 * 3104 + 16 == 7776
    assert a.num_embedding_params() == 1552 and a.num_non_embedding_params() == 6224
    b = make(B)
    # B (V=50, T=8, d=8, L=1, 4 heads of 2, ratio 2, biases): token emb 400, no position emb,
    # untied head 400 (no bias); ln1 8+8, qkv 192+24, proj 64+8, q/k norms 2*(2+2),
    # ln2 16, fc 8*16+16 = 144, proj 16*8+8 = 136: 608; final ln 16.
    assert b.num_params() == 400 + 400 + 608 + 16 == 1424
    assert b.num_embedding_params() == 800 and b.num_non_embedding_params() == 624
    # the counts are the module's real parameters
    assert b.num_params() == sum(p.numel() for p in b.state_dict().values())
    assert a.num_params() == sum(p.numel() for p in a.state_dict().values())


def test_flops_per_token_match_hand_counts():
    a, b = make(A), make(B)
    # Kaplan: 6 N + 6 L T d
    assert flops_per_token(a.cfg, a.num_non_embedding_params()) == 6 * 6224 + 6 * 2 * 32 * 16 == 43488
    assert flops_per_token(b.cfg, b.num_non_embedding_params()) == 6 * 624 + 6 * 1 * 8 * 8 == 4128
    # Chinchilla, A: per layer 6*256 + 2*32*16 + 3*2*32 + 2*32*16 + 2*256 + 16*256 = 8384;
    # forward 2*65*16 + 2*8384 + 2*16*65 = 20928; training 3x.
    assert flops_per_token(a.cfg, 0, "chinchilla") == 3 * 20928 == 62784
    with pytest.raises(ValueError, match="kaplan or chinchilla"):
        flops_per_token(a.cfg, 0, "palm")


def _reference_forward(model, idx):
    """The GPT written out in float64 from the model's weights: explicit masked
    softmax attention, rotary as complex rotation, LayerNorm by hand."""
    cfg, sd = model.cfg, {k: v.double() for k, v in model.state_dict().items()}
    T, d, H = idx.shape[1], cfg.n_embd, cfg.n_head
    hd = d // H

    def ln(x, prefix, eps=1e-5):
        x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
        return x * sd[prefix + ".weight"] + sd.get(prefix + ".bias", 0.0)

    def lin(x, prefix):
        return x @ sd[prefix + ".weight"].T + sd.get(prefix + ".bias", 0.0)

    def rotate(x):  # (B, H, T, hd): (x_i, x_{i+hd/2}) as a complex number times e^{i t theta_i}
        half = hd // 2
        theta = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / hd)
        angle = torch.arange(T, dtype=torch.float64)[:, None] * theta
        z = torch.complex(x[..., :half], x[..., half:]) * torch.exp(1j * angle)
        return torch.cat([z.real, z.imag], dim=-1)

    x = sd["tok_emb.weight"][idx]
    if cfg.positions == "learned":
        x = x + sd["pos_emb.weight"][:T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(cfg.n_layer):
        p = f"blocks.{i}"
        h = ln(x, p + ".ln1")
        q, k, v = lin(h, p + ".attn.qkv").split(d, dim=-1)
        q, k, v = (t.reshape(t.shape[0], T, H, hd).transpose(1, 2) for t in (q, k, v))
        if cfg.qk_layernorm:
            q, k = ln(q, p + ".attn.q_norm"), ln(k, p + ".attn.k_norm")
        if cfg.positions == "rotary":
            q, k = rotate(q), rotate(k)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(x.shape)
        x = x + lin(y, p + ".attn.proj")
        h = lin(ln(x, p + ".ln2"), p + ".mlp.fc")
        x = x + lin(0.5 * h * (1 + torch.erf(h / math.sqrt(2))), p + ".mlp.proj")
    x = ln(x, "ln_f")
    head = sd["tok_emb.weight"] if cfg.tie_embeddings else sd["head.weight"]
    return x @ head.T


@pytest.mark.parametrize("cfg", [A, B], ids=["learned-tied", "rotary-untied-qkln-bias"])
def test_forward_matches_a_float64_reference(cfg):
    model = make(cfg)
    with torch.no_grad():  # non-trivial norms and biases, so they are checked too
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    idx = torch.randint(0, cfg["vocab"], (3, cfg["block"]), generator=torch.Generator().manual_seed(1))
    ours = model.double()(idx)
    assert ours.shape == (3, cfg["block"], cfg["vocab"])
    torch.testing.assert_close(ours, _reference_forward(model, idx), rtol=1e-10, atol=1e-10)
    # shorter sequences use the first positions
    torch.testing.assert_close(model(idx[:, :5]), _reference_forward(model, idx[:, :5]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cfg", [A, B], ids=["learned", "rotary"])
def test_attention_is_causal(cfg):
    model = make(cfg)
    idx = torch.randint(0, cfg["vocab"], (2, cfg["block"]))
    changed = idx.clone()
    changed[:, 5] = (changed[:, 5] + 1) % cfg["vocab"]
    out, out_changed = model(idx), model(changed)
    assert torch.equal(out[:, :5], out_changed[:, :5])
    assert not torch.allclose(out[:, 5:], out_changed[:, 5:])


def test_tied_head_is_the_token_embedding_and_bad_configs_fail():
    a = make(A)
    assert a.head is None and "head.weight" not in a.state_dict()  # the head reads tok_emb.weight
    assert make(B).head.weight.shape == make(B).tok_emb.weight.shape
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPTConfig(vocab_size=10, block_size=4, n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="positions must be one of"):
        GPTConfig(vocab_size=10, block_size=4, positions="alibi")
    with pytest.raises(ValueError, match="longer than block_size"):
        a(torch.zeros(1, 33, dtype=torch.long))


def test_per_token_loss_with_the_log_partition_penalty():
    """The studies' z-loss is the existing penalty over every token's logits."""
    logits, targets = torch.randn(2, 5, 7, dtype=torch.float64), torch.randint(0, 7, (2, 5))
    loss = PerTokenLoss(build_loss({"name": "log_partition_penalty", "base": "cross_entropy", "coefficient": 1e-2}))
    by_hand = sum(
        -torch.log_softmax(logits[i, t], -1)[targets[i, t]] + 1e-2 * torch.logsumexp(logits[i, t], -1) ** 2
        for i in range(2) for t in range(5)
    ) / 10
    torch.testing.assert_close(loss(logits, targets), by_hand)
    with pytest.raises(ValueError, match=r"\(N, T, C\)"):
        loss(logits[0], targets[0])


SPEC = {
    "dataset": {"name": "charlm", "block_size": 32, "eval_windows": 32},
    "model": {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32},
    "loss": {"name": "cross_entropy"},
    "optimizer": {"name": "adamw", "lr": 3e-3},
    "batch_size": 16,
    "steps": 30,
    "log_every": 10,
    "eval_every": 30,
    "eval_splits": ["val"],
}


@pytest.fixture(scope="module")
def charlm_data():
    return build_dataset(SPEC["dataset"])


def test_a_tiny_gpt_trains_through_the_loop_and_the_loss_falls(charlm_data, tmp_path):
    result = train_run(SPEC, charlm_data, tmp_path / "a")
    assert result.status == "ok" and result.steps_completed == 30
    m = pd.read_parquet(tmp_path / "a" / "metrics.parquet")
    val = m[(m.split == "val") & (m.metric == "loss")].set_index("step")["value"]
    train = m[(m.split == "train") & (m.metric == "loss")].set_index("step")["value"]
    assert val[0] == pytest.approx(math.log(77), abs=0.1)  # uniform over the 77 characters at init
    assert val[30] < val[0] - 0.7 and train[30] < train[10]
    acc = m[(m.split == "val") & (m.metric == "accuracy")].set_index("step")["value"]
    assert 0.0 <= acc[0] <= 1.0 and acc[30] > acc[0]  # per-token accuracy
    # the windows are drawn by the run's seed: the same seed trains to the same numbers
    train_run(SPEC, charlm_data, tmp_path / "b")
    again = pd.read_parquet(tmp_path / "b" / "metrics.parquet")
    assert again["value"].tolist() == m["value"].tolist()
    train_run(dict(SPEC, seed=1), charlm_data, tmp_path / "c")
    other = pd.read_parquet(tmp_path / "c" / "metrics.parquet")
    assert other["value"].tolist() != m["value"].tolist()


def test_z_loss_and_qk_layernorm_train_through_the_loop(charlm_data, tmp_path):
    spec = dict(SPEC, steps=10, eval_every=10, log_every=10,
                loss={"name": "log_partition_penalty", "base": "cross_entropy", "coefficient": 1e-4},
                model=dict(SPEC["model"], qk_layernorm=True, positions="rotary"))
    assert train_run(spec, charlm_data, tmp_path).status == "ok"


def test_batched_runs_of_the_gpt_match_runs_trained_alone(tmp_path):
    """Two runs as one vmapped computation (the workflow's default) give the
    numbers each gives alone; the tied head survives the functional copy."""
    from descentlab.train.batched import train_batched

    spec = dict(SPEC, dataset=dict(SPEC["dataset"], block_size=16, eval_windows=8),
                model={"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16}, batch_size=8, steps=6,
                log_every=3, eval_every=3)
    data = build_dataset(spec["dataset"])
    specs = [spec, dict(spec, optimizer={"name": "adamw", "lr": 1e-2}, seed=1)]
    with warnings.catch_warnings():  # vmap has no batching rule for CPU SDPA: it loops over runs
        warnings.simplefilter("ignore", UserWarning)
        train_batched(specs, data, [tmp_path / "b0", tmp_path / "b1"])
    for i, s in enumerate(specs):
        train_run(s, data, tmp_path / f"a{i}")
        alone = pd.read_parquet(tmp_path / f"a{i}" / "metrics.parquet")
        batched = pd.read_parquet(tmp_path / f"b{i}" / "metrics.parquet")
        assert alone[["step", "split", "metric"]].equals(batched[["step", "split", "metric"]])
        assert (alone["value"] - batched["value"]).abs().max() < 1e-5
