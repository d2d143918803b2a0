"""Muon + AdamW wrapper: routing, equality with separately built torch.optim.Muon and
torch.optim.AdamW, one config dict, groups, state round trip."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from descentlab.optim import OPTIMIZERS
from descentlab.optim.muon import MuonAdamW


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 6, bias=False), nn.ReLU(), nn.Linear(6, 3))


def batches(steps=20, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(7, 5, generator=gen), torch.randn(7, 3, generator=gen)) for _ in range(steps)]


def train(model, opt, data):
    for x, y in data:
        def closure():
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)


def hidden_and_rest(model, first_last=True):
    names = [n for n, p in model.named_parameters() if p.dim() == 2]
    muon = names[1:-1] if first_last else names
    return muon, [n for n, _ in model.named_parameters() if n not in muon]


@pytest.mark.parametrize("first_last", [True, False])
def test_routing(first_last):
    model = make_model()
    opt = MuonAdamW(model.parameters(), adamw_first_last=first_last)
    by_id = {id(p): n for n, p in model.named_parameters()}
    routed_muon = [by_id[id(p)] for g in opt.param_groups if g["use_muon"] for p in g["params"]]
    routed_adamw = [by_id[id(p)] for g in opt.param_groups if not g["use_muon"] for p in g["params"]]
    muon, rest = hidden_and_rest(model, first_last)
    assert routed_muon == muon and routed_adamw == rest
    assert muon == (["3.weight", "5.weight"] if first_last else ["0.weight", "3.weight", "5.weight", "7.weight"])


def test_equals_separate_torch_optimizers():
    data = batches()
    muon_kw = dict(lr=0.02, momentum=0.9, weight_decay=0.01)
    adamw_kw = dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    m1, m2 = make_model(), make_model()
    ours = OPTIMIZERS.build({"name": "muon", **muon_kw, "adamw": adamw_kw}, m1.parameters())
    train(m1, ours, data)

    muon_names, _ = hidden_and_rest(m2)
    named = dict(m2.named_parameters())
    hidden = [named[n] for n in muon_names]
    rest = [p for n, p in m2.named_parameters() if n not in muon_names]
    # fused, as the wrapper's AdamW by default: the fused kernel and the foreach one may
    # differ by an ulp (AVX-512 machines), the kernel choice is not what is tested here
    muon, adamw = torch.optim.Muon(hidden, **muon_kw), torch.optim.AdamW(rest, fused=True, **adamw_kw)
    for x, y in data:
        muon.zero_grad(), adamw.zero_grad()
        ((m2(x) - y) ** 2).mean().backward()
        muon.step(), adamw.step()
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    assert ours.muon.defaults["lr"] == 0.02 and ours.adamw.defaults["betas"] == (0.9, 0.95)


def test_group_keys_apply_to_both_parts_and_adamw_overrides():
    model = make_model()
    params = list(model.parameters())
    groups = [{"params": params[:6]}, {"params": params[6:], "lr": 1e-28, "adamw": {"lr": 5e-4}}]
    opt = MuonAdamW(groups, lr=0.02)
    last = [g for g in opt.param_groups if any(p is params[-1] for p in g["params"])][0]
    hidden = [g for g in opt.param_groups if any(p is model[5].weight for p in g["params"])][0]
    assert last["lr"] == 5e-4 and not last["use_muon"]
    assert hidden["lr"] == 1e-28 and hidden["use_muon"]


def test_state_dict_round_trip():
    data = batches(12)
    spec = {"name": "muon", "lr": 0.02, "adamw": {"lr": 1e-3}}
    model = make_model()
    opt = OPTIMIZERS.build(spec, model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for batch in data[:5]:
        train(model, opt, [batch])
        sched.step()
    saved = copy.deepcopy(opt.state_dict())
    weights = copy.deepcopy(model.state_dict())
    train(model, opt, data[5:])

    model2 = make_model(seed=4)
    model2.load_state_dict(weights)
    opt2 = OPTIMIZERS.build(dict(spec, lr=1.0), model2.parameters())
    opt2.load_state_dict(saved)
    assert opt2.muon.state is opt2.state and opt2.adamw.param_groups[0] is opt2.param_groups[1]
    assert opt2.muon.param_groups[0]["lr"] == 0.02 * 0.25
    train(model2, opt2, data[5:])
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_conv_kernels_go_to_adamw_and_bad_args():
    conv = nn.Conv2d(2, 3, 3)
    opt = MuonAdamW(list(conv.parameters()), adamw_first_last=False)
    assert opt.muon is None and all(not g["use_muon"] for g in opt.param_groups)
    assert MuonAdamW(list(conv.parameters()), lr=0.05).adamw.defaults["lr"] == 0.05  # one lr moves both
    with pytest.raises(ValueError):
        MuonAdamW([], lr=0.02)
    with pytest.raises(ValueError):
        MuonAdamW(conv.parameters(), adamw=0.1)


def test_complex_parameters_are_adamws_real_views():
    # a complex parameter goes to AdamW (its real view has one more dimension, and Muon
    # orthogonalises real matrices), where torch updates it as its real view
    gen = torch.Generator().manual_seed(0)
    hidden = [torch.randn(4, 4, dtype=torch.float64, generator=gen) for _ in range(3)]
    complex_values = [torch.randn(4, 4, dtype=torch.complex128, generator=gen),
                      torch.randn(4, dtype=torch.complex128, generator=gen)]
    targets = [torch.randn(4, 4, 2, dtype=torch.float64, generator=gen),
               torch.randn(4, 2, dtype=torch.float64, generator=gen)]
    params = [nn.Parameter(v.clone()) for v in hidden + complex_values]
    muon_ref = [nn.Parameter(v.clone()) for v in hidden]
    adamw_ref = [nn.Parameter(torch.view_as_real(v).clone()) for v in complex_values]

    def loss(hidden_params, complex_views):
        return (sum((h @ h.T).tanh().sum() for h in hidden_params)
                + sum(((v - t) ** 2).sum() for v, t in zip(complex_views, targets)))

    opt = MuonAdamW(params, lr=0.02, adamw={"lr": 1e-2})
    assert [p.is_complex() for g in opt.param_groups if not g["use_muon"] for p in g["params"]].count(True) == 2
    refs = [torch.optim.Muon(muon_ref[1:2], lr=0.02),
            torch.optim.AdamW(muon_ref[:1] + muon_ref[2:] + adamw_ref, lr=1e-2)]
    for _ in range(5):
        opt.zero_grad()
        loss(params[:3], [torch.view_as_real(p) for p in params[3:]]).backward()
        opt.step()
        for ref in refs:
            ref.zero_grad()
        loss(muon_ref, adamw_ref).backward()
        for ref in refs:
            ref.step()
    for got, expected in zip(params, muon_ref + adamw_ref):
        got = torch.view_as_real(got) if got.is_complex() else got
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
