"""small-scale-proxies: the GPT's logit growth (attention logits, output
log-partition) against a computation from hooked projections, the logit_growth
instrument through the training loop (alone and batched), and the paper's LR
sensitivity against hand computations."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from descentlab.data import build_dataset
from descentlab.models import build_model
from descentlab.plots.proxies import lr_sensitivity, proxies_summary
from descentlab.train import train_run
from descentlab.train.instruments import build_instrument

CONFIGS = {
    "learned-plain": {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 16},
    "rotary-qkln-bias": {"name": "gpt", "n_layer": 2, "n_head": 4, "n_embd": 16, "positions": "rotary",
                         "qk_layernorm": True, "bias": True},
}


def _logits_from_hooked_projections(model, idx):
    """Per layer, max |q.k| / sqrt(d) over heads and causal pairs, from the qkv
    projection's output captured by a hook, normalised and rotated here in float64
    (LayerNorm by hand, rotary as a complex rotation)."""
    captured = []
    hooks = [b.attn.qkv.register_forward_hook(lambda m, i, o: captured.append(o.double())) for b in model.blocks]
    with torch.no_grad():
        logits = model(idx)
    for h in hooks:
        h.remove()
    cfg = model.cfg
    B, T = idx.shape
    hd = cfg.n_embd // cfg.n_head
    out = []
    for block, qkv in zip(model.blocks, captured):
        q, k, _ = (t.reshape(B, T, cfg.n_head, hd).transpose(1, 2) for t in qkv.split(cfg.n_embd, dim=-1))
        if cfg.qk_layernorm:
            def ln(x, norm):
                x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps)
                return x * norm.weight.double() + (norm.bias.double() if norm.bias is not None else 0.0)
            q, k = ln(q, block.attn.q_norm), ln(k, block.attn.k_norm)
        if cfg.positions == "rotary":
            half = hd // 2
            theta = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / hd)
            angle = torch.arange(T, dtype=torch.float64)[:, None] * theta
            q, k = ((lambda z: torch.cat([z.real, z.imag], -1))(torch.complex(t[..., :half], t[..., half:]) * torch.exp(1j * angle))
                    for t in (q, k))
        att = (q @ k.transpose(-1, -2)).abs() / math.sqrt(hd)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        out.append(att[..., mask].max())
    return torch.stack(out), logits.double()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logit_growth_matches_hooked_projections(name):
    torch.manual_seed(0)
    model = build_model(CONFIGS[name], (12,), 30)
    with torch.no_grad():  # large q/k weights, so the largest logit is far from the others
        for block in model.blocks:
            block.attn.qkv.weight.mul_(20.0)
    idx = torch.randint(0, 30, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        per_layer, logits = _logits_from_hooked_projections(model, idx)
    got = model.logit_growth(idx)
    assert got["max_attention_logit"] == pytest.approx(float(per_layer.max()), rel=1e-5)
    assert got["mean_log_partition"] == pytest.approx(float(torch.logsumexp(logits, -1).mean()), rel=1e-6)
    assert float(per_layer.max()) > 1.5  # non-trivial numbers (qk-layernorm bounds them near sqrt(d))


def test_max_logit_ignores_future_keys():
    """Query 0 against key 1 (a future key) is the one large product; it must not count."""
    model = build_model({"name": "gpt", "n_layer": 1, "n_head": 1, "n_embd": 4}, (2,), 5)
    attn = model.blocks[0].attn
    with torch.no_grad():
        w = torch.zeros(12, 4)
        w[0, 0] = 10.0  # q = 10 * x[0]: large for token 0 (x = e0), zero for token 1 (x = e1)
        w[4, 1] = 10.0  # k = 10 * x[1]: zero for token 0, large for token 1
        attn.qkv.weight.copy_(w)
        x = torch.eye(4)[:2].unsqueeze(0)  # tokens e0, e1
        assert float(attn.max_logit(x, None)) == 0.0  # every causal product is 0
        q, k, _ = attn.queries_keys_values(x, None)
        assert float((q @ k.transpose(-1, -2)).abs().amax()) == pytest.approx(100.0)  # the future pair


SPEC = {
    "dataset": {"name": "charlm", "block_size": 16, "eval_windows": 8},
    "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16},
    "loss": {"name": "cross_entropy"},
    "optimizer": {"name": "adamw", "lr": 3e-2},
    "batch_size": 8,
    "steps": 10,
    "log_every": 5,
    "eval_every": 5,
    "eval_splits": ["val"],
    "instruments": [{"name": "logit_growth", "every": 5, "n_examples": 4}],
}


@pytest.fixture(scope="module")
def data():
    return build_dataset(SPEC["dataset"])


def test_instrument_records_the_final_weights_logit_growth(data, tmp_path):
    train_run(SPEC, data, tmp_path)
    m = pd.read_parquet(tmp_path / "metrics.parquet")
    grown = m[(m.split == "train") & (m.metric == "max_attention_logit")].set_index("step")["value"]
    assert list(grown.index) == [5, 10]
    model = build_model(SPEC["model"], (16,), data.num_outputs)
    model.load_state_dict(torch.load(tmp_path / "final.pt", weights_only=True))
    expected = model.logit_growth(data.x["train"][:4])
    assert grown[10] == pytest.approx(expected["max_attention_logit"], rel=1e-5)
    log_z = m[(m.split == "train") & (m.metric == "mean_log_partition")].set_index("step")["value"]
    assert log_z[10] == pytest.approx(expected["mean_log_partition"], rel=1e-5)


def test_instrument_batched_matches_alone(data, tmp_path):
    from descentlab.train.batched import train_batched

    specs = [SPEC, dict(SPEC, optimizer={"name": "adamw", "lr": 1e-1}, seed=1)]
    with warnings.catch_warnings():  # vmap has no batching rule for CPU SDPA
        warnings.simplefilter("ignore", UserWarning)
        train_batched(specs, data, [tmp_path / "b0", tmp_path / "b1"])
    for i, spec in enumerate(specs):
        train_run(spec, data, tmp_path / f"a{i}")
        alone, batched = (pd.read_parquet(tmp_path / f"{k}{i}" / "metrics.parquet") for k in "ab")
        pick = lambda t: t[t.metric.isin(["max_attention_logit", "mean_log_partition"])].reset_index(drop=True)  # noqa: E731
        assert len(pick(alone)) == 4
        np.testing.assert_allclose(pick(alone)["value"], pick(batched)["value"], rtol=1e-4)


def test_instrument_refuses_a_model_without_attention():
    inst = build_instrument({"name": "logit_growth", "every": 1})
    mlp = build_model({"name": "mlp", "width": 4, "depth": 1}, (3,), 2)
    with pytest.raises(ValueError, match="logit_growth.*Sequential.*gpt"):
        inst(1, mlp, None, torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="every and n_examples"):
        build_instrument({"name": "logit_growth", "every": 0})


def test_lr_sensitivity_by_hand():
    # capped at L0 = 4: [3.0, 2.5, 4.0 (diverged), 4.0 (above L0)], mean 3.375, best 2.5
    assert lr_sensitivity([3.0, 2.5, math.nan, 5.0], 4.0) == pytest.approx((0.875, 2.5))
    assert lr_sensitivity([2.0, 2.0], 4.0) == (0.0, 2.0)
    assert lr_sensitivity([math.inf], 4.0)[0] != lr_sensitivity([math.inf], 4.0)[0]  # NaN: nothing trained
    with pytest.raises(ValueError, match="no runs"):
        lr_sensitivity([], 4.0)


def test_summary_compares_each_setting_with_the_baseline_at_its_width():
    rows = []
    # baseline: flat in lr; "fragile": worse at high lr, more so at width 64
    for setting, width, lr, loss in [
        ("base", 32, 0.01, 3.0), ("base", 32, 0.1, 3.0), ("base", 64, 0.01, 2.8), ("base", 64, 0.1, 2.8),
        ("fragile", 32, 0.01, 3.0), ("fragile", 32, 0.1, 3.4), ("fragile", 64, 0.01, 2.8), ("fragile", 64, 0.1, math.inf),
    ]:
        rows.append({"setting": setting, "width": width, "lr": lr, "seed": 0, "status": "ok" if np.isfinite(loss) else "diverged",
                     "initial_loss": 4.0, "final_loss": loss, "peak_attention_logit": 1000.0 if setting == "fragile" else 10.0,
                     "final_log_partition": -2.0})
    summary = proxies_summary(pd.DataFrame(rows), "setting", "width", "lr", "base").set_index(["setting", "width"])
    assert summary.loc[("fragile", 32), "lr_sensitivity"] == pytest.approx(0.2)  # mean(3.0, 3.4) - 3.0
    assert summary.loc[("fragile", 64), "lr_sensitivity"] == pytest.approx(0.6)  # mean(2.8, 4.0) - 2.8
    assert summary.loc[("fragile", 64), "baseline_lr_sensitivity"] == 0.0
    assert summary.loc[("fragile", 64), "diverged_runs"] == 1
    assert summary.loc[("fragile", 32), "baseline_peak_attention_logit_top_lr"] == 10.0
    assert summary.loc[("fragile", 32), "abs_log_partition_top_lr"] == 2.0
    assert summary.loc[("fragile", 32), "sensitivity_grows_with_width"]
    assert not summary.loc[("base", 32), "sensitivity_grows_with_width"]  # 0 then 0: flat
    with pytest.raises(ValueError, match="baseline setting 'none'"):
        proxies_summary(pd.DataFrame(rows), "setting", "width", "lr", "none")
