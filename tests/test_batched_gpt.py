"""Batched GPT runs (descentlab.train.direct_gpt, batched_losses) against each
run's own ``GPT`` module and loss, the independent answer, in float64; and a
job of GPT runs batched against the same runs trained one by one."""

import pytest
import torch

from descentlab.data import build_dataset
from descentlab.losses import build_loss
from descentlab.losses.sequence import PerTokenLoss
from descentlab.models import MODELS
from descentlab.train import train_run
from descentlab.train.batched import train_job
from descentlab.train.batched_losses import stacked_losses
from descentlab.train.direct_gpt import DirectGPT
from descentlab.train.stack import ModelStack, direct_forward_of

from test_batched import assert_same_runs, f64  # noqa: F401  (f64: the float64 fixture)

VOCAB, BLOCK = 11, 8
CONFIGS = {
    "learned-tied": {},
    "rotary-qkln-bias-untied": {"positions": "rotary", "qk_layernorm": True, "bias": True, "tie_embeddings": False},
    "learned-qkln-mlp2": {"qk_layernorm": True, "mlp_ratio": 2, "n_layer": 1},
}


def models(options, R=3):
    out = []
    for r in range(R):
        torch.manual_seed(r)
        m = MODELS.build({"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 8, **options}, (BLOCK,), VOCAB)
        with torch.no_grad():  # non-trivial LayerNorm affines, so a mixed-up run would show
            for name, p in m.named_parameters():
                if "ln" in name or "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
        out.append(m)
    return out


def stacked(ms):
    names = dict(ms[0].named_parameters())
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in ms]).requires_grad_(True) for n in names}
    buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in ms]) for n, _ in ms[0].named_buffers()}
    return params, buffers


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("batched_x", [True, False])
def test_direct_gpt_matches_each_runs_module_in_float64(name, batched_x, f64):
    ms = models(CONFIGS[name])
    params, buffers = stacked(ms)
    T = BLOCK if name != "learned-qkln-mlp2" else BLOCK - 3  # shorter windows than the block too
    idx = torch.randint(VOCAB, (3, 5, T) if batched_x else (5, T))
    out = DirectGPT(ms[0])(params, buffers, idx, batched_x, training=True)
    weights = torch.randn(out.shape[1:])
    (out * weights).sum().backward()
    for r, m in enumerate(ms):
        own = m(idx[r] if batched_x else idx)
        assert torch.allclose(out[r], own, atol=1e-12, rtol=1e-12)
        (own * weights).sum().backward()
        for n, p in m.named_parameters():
            assert torch.allclose(params[n].grad[r], p.grad, atol=1e-12, rtol=1e-12), (name, n)


def test_the_stack_takes_the_direct_gpt_path():
    gpt = MODELS.build({"name": "gpt", "n_layer": 1, "n_head": 1, "n_embd": 4}, (BLOCK,), VOCAB)
    assert isinstance(direct_forward_of(gpt), DirectGPT)


LOSSES = {
    "cross_entropy": {"name": "cross_entropy"},
    "z-loss": {"name": "log_partition_penalty", "base": "cross_entropy", "coefficient": 0.01},
    "z-loss over label smoothing": {"name": "log_partition_penalty", "base": {"name": "label_smoothing"}, "coefficient": 0.01},
}


@pytest.mark.parametrize("per_token", [True, False])
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("batched_y", [True, False])
def test_stacked_losses_are_each_runs_own_loss(loss, per_token, batched_y, f64):
    module = build_loss(LOSSES[loss])
    if per_token:
        module = PerTokenLoss(module)
    shape = (3, 6, 4) if per_token else (3, 6)
    outs = torch.randn(*shape, 5)
    y = torch.randint(5, shape if batched_y else shape[1:])
    got = stacked_losses(module, outs, y, batched_y)
    if "label smoothing" in loss:
        assert got is None  # no stacked form: ModelStack vmaps the module
        return
    expected = torch.stack([module(outs[r], y[r] if batched_y else y) for r in range(3)])
    assert torch.allclose(got, expected, atol=1e-14, rtol=1e-14)


def test_stacked_losses_raise_the_modules_own_errors():
    module = PerTokenLoss(build_loss({"name": "cross_entropy"}))
    with pytest.raises(ValueError, match="per-token loss"):
        stacked_losses(module, torch.randn(2, 3, 4, 5), torch.randint(5, (2, 3, 7)), batched_y=True)


SPEC = {
    "dataset": {"name": "charlm", "block_size": BLOCK, "eval_windows": 16},
    "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 8, "qk_layernorm": True},
    "loss": {"name": "log_partition_penalty", "base": "cross_entropy", "coefficient": 1e-3},
    "batch_size": 4,
    "steps": 100,
    "log_every": 10,
    "eval_every": 50,
}


def test_a_batched_gpt_job_matches_one_by_one_in_float64(tmp_path, f64, caplog):
    data = build_dataset(SPEC["dataset"])  # token ids: nothing to cast; the models are float64
    specs = [
        dict(SPEC, seed=0, optimizer={"name": "adamw", "lr": 3e-3, "weight_decay": 0.1}, schedule={"name": "cosine", "warmup_steps": 10}),
        dict(SPEC, seed=1, optimizer={"name": "adamw", "lr": 1e-2, "weight_decay": 0.0}, schedule={"name": "constant"}),
        dict(SPEC, seed=2, optimizer={"name": "adamw_decoupled", "lr": 3e-3, "weight_decay": 0.1}, schedule={"name": "linear"}),
    ]
    alone = [tmp_path / f"alone{k}" for k in range(3)]
    together = [tmp_path / f"batched{k}" for k in range(3)]
    for spec, out in zip(specs, alone):
        train_run(spec, data, out)
    with caplog.at_level("INFO", logger="descentlab"):
        train_job(specs, [data] * 3, together)  # on a CPU too (benchmarks/results/batched.md, workload gpt)
    assert "3 runs train as one batch: batched0, batched1, batched2" in caplog.text
    assert_same_runs(alone, together, 1e-10)
