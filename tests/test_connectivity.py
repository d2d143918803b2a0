"""Barrier analyses and figures of the mode-connectivity study, against hand
computations in float64 and a brute-force search over every permutation."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from descentlab.analyses.connectivity import fork_barriers, matching_barriers, seed_pairs
from descentlab.data import SplitData
from descentlab.models import mlp
from descentlab.plots.connectivity import instability_barriers, layer_summary, layerwise_barrier_heatmap, \
    matching_barriers_vs_width, pair_summary
from descentlab.runs import Run
from descentlab.spec import validate

DIM, CLASSES = 6, 3


def _data(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(CLASSES, DIM, generator=g)
    x = {s: torch.randn(n, DIM, generator=g) for s, n in (("train", 96), ("val", 16), ("test", 64))}
    y = {s: (v @ w.T).argmax(1) for s, v in x.items()}
    path = tmp_path / "data.pt"
    SplitData(x, y, "classification", CLASSES, (DIM,)).save(path)
    return path, x, y


def _net(seed, width=3):
    torch.manual_seed(seed)
    return mlp((DIM,), CLASSES, width=width, depth=2)


def _train(model, x, y, steps=150, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _run(tmp_path, data_path, name, state, seed, width=3, init=None, status="ok"):
    spec = validate({"dataset": {"name": "gaussian_mixture", "n_samples": 100, "dim": DIM, "n_classes": CLASSES},
                     "model": {"name": "mlp", "width": width, "depth": 2}, "optimizer": {"name": "sgd", "lr": 0.1},
                     "steps": 10, "seed": seed})
    if init is not None:
        spec = dict(spec, init=init)
    d = tmp_path / "runs" / name
    d.mkdir(parents=True)
    torch.save({k: v.clone() for k, v in state.items()}, d / "final.pt")
    (d / "status.json").write_text(json.dumps({"status": status}))
    return Run(name, spec, {"seed": seed}, "s", "sweep", d, data_path)


def _hand_barriers(state_a, state_b, x, y, width=3, layer=None, n_points=11):
    """(loss barrier, error barrier) of the straight path, evaluated in float64 by hand; with
    ``layer`` (a module prefix), only that layer's tensors move."""
    model = _net(0, width).double().eval()
    alphas = np.linspace(0, 1, n_points)
    losses, errors = [], []
    for alpha in alphas:
        mixed = {}
        for k, v in state_a.items():
            moves = layer is None or k.rsplit(".", 1)[0] == layer
            a = float(alpha) if moves else 0.0
            mixed[k] = (1 - a) * v.double() + a * state_b[k].double()
        model.load_state_dict(mixed)
        with torch.no_grad():
            out = model(x.double())
        losses.append(float(F.cross_entropy(out, y)))
        errors.append(float((out.argmax(1) != y).double().mean()))
    out = []
    for values in (np.array(losses), np.array(errors)):
        line = (1 - alphas) * values[0] + alphas * values[-1]
        out.append(float(np.max(values - line)))
    return out


def _permute(state, p1, p2):
    """The same network with its hidden units reordered (written out by hand)."""
    s = {k: v.clone() for k, v in state.items()}
    s["1.weight"], s["1.bias"] = state["1.weight"][p1], state["1.bias"][p1]
    s["3.weight"], s["3.bias"] = state["3.weight"][p2][:, p1], state["3.bias"][p2]
    s["5.weight"] = state["5.weight"][:, p2]
    return s


def test_seed_pairs_pair_sorted_seeds_within_each_group_and_refuse_odd_groups(tmp_path):
    runs = [Run(f"r{s}{g}", {"seed": s, "g": g}, {}) for g in "ab" for s in (5, 1, 3, 0)]
    pairs = seed_pairs(runs, lambda r: r.spec["g"], "t")
    assert [(g, a.spec["seed"], b.spec["seed"]) for g, a, b in pairs] == [("a", 0, 1), ("a", 3, 5), ("b", 0, 1), ("b", 3, 5)]
    with pytest.raises(ValueError, match="3 runs .*even number of seeds"):
        seed_pairs(runs[:3], lambda r: r.spec["g"], "t")
    with pytest.raises(ValueError, match="share a seed"):
        seed_pairs([Run("x", {"seed": 1}, {}), Run("y", {"seed": 1}, {})], lambda r: 0, "t")


def test_matching_barriers_of_a_permuted_copy_are_zero_after_matching_and_match_brute_force(tmp_path):
    data_path, x, y = _data(tmp_path)
    net = _train(_net(0), x["train"], y["train"])
    state = {k: v.detach() for k, v in net.state_dict().items()}
    p1, p2 = torch.tensor([2, 0, 1]), torch.tensor([1, 2, 0])
    copy = _permute(state, p1, p2)
    runs = [_run(tmp_path, data_path, "a", state, 0), _run(tmp_path, data_path, "b", copy, 1)]
    table = matching_barriers(runs, splits=["train", "test"], n_points=11)
    assert set(table["alignment"]) == {"none", "weight matching"} and len(table) == 4
    assert (table["width"] == 3).all() and (table["pair"] == "0+1").all() and (table["status"] == "ok").all()
    for split in ("train", "test"):
        naive = table[(table["split"] == split) & (table["alignment"] == "none")].iloc[0]
        matched = table[(table["split"] == split) & (table["alignment"] == "weight matching")].iloc[0]
        hand_loss, hand_error = _hand_barriers(state, copy, x[split], y[split])
        assert naive["loss_barrier"] == pytest.approx(hand_loss, abs=1e-5)
        assert naive["error_barrier"] == pytest.approx(hand_error, abs=1e-9)
        assert matched["loss_barrier"] == pytest.approx(0.0, abs=1e-6)
        assert matched["loss_a"] == pytest.approx(matched["loss_b"], abs=1e-6)
    assert table[(table["split"] == "train") & (table["alignment"] == "none")]["loss_barrier"].iloc[0] > 0.05
    # brute force: the smallest barrier over every reordering of the copy's hidden units is zero (the original
    # order), and it is the one weight matching found
    best = min(_hand_barriers(state, _permute(copy, torch.tensor(q1), torch.tensor(q2)), x["train"], y["train"], n_points=5)[0]
               for q1 in itertools.permutations(range(3)) for q2 in itertools.permutations(range(3)))
    assert best == pytest.approx(0.0, abs=1e-9)


def test_fork_barriers_pair_children_per_fork_step_with_layerwise_rows_and_diverged_pairs(tmp_path):
    data_path, x, y = _data(tmp_path)
    states = {}
    runs = []
    for step in (0, 5):
        for seed in (0, 1, 2, 3):
            net = _train(_net(100 + seed), x["train"], y["train"], steps=40 + 10 * step + seed, seed=seed)
            states[(step, seed)] = {k: v.detach() for k, v in net.state_dict().items()}
            status = "diverged" if (step, seed) == (5, 3) else "ok"
            runs.append(_run(tmp_path, data_path, f"c{step}{seed}", states[(step, seed)], seed,
                             init={"run": "parent", "step": step, "restore": "optimizer", "exclude": []}, status=status))
    runs.append(_run(tmp_path, data_path, "scratch", states[(0, 0)], 9))  # no init: left out
    table = fork_barriers(runs, splits=["test"], n_points=11, layerwise=True)
    assert sorted(table["fork_step"].unique()) == [0, 5] and set(table["split"]) == {"test"}
    ok = table[table["status"] == "ok"]
    assert set(ok["layer"]) == {"all", "1", "3", "5"}
    assert dict(zip(ok["layer"], ok["layer_index"])) == {"all": 0, "1": 1, "3": 2, "5": 3}
    for (step, pair), (sa, sb) in {(0, "0+1"): (0, 1), (0, "2+3"): (2, 3), (5, "0+1"): (0, 1)}.items():
        for layer in ("all", "1", "3", "5"):
            row = ok[(ok["fork_step"] == step) & (ok["pair"] == pair) & (ok["layer"] == layer)].iloc[0]
            loss, error = _hand_barriers(states[(step, sa)], states[(step, sb)], x["test"], y["test"],
                                         layer=None if layer == "all" else layer)
            assert row["loss_barrier"] == pytest.approx(loss, abs=1e-5)
            assert row["error_barrier"] == pytest.approx(error, abs=1e-9)
    failed = table[table["status"] != "ok"]
    assert len(failed) == 1 and failed.iloc[0]["pair"] == "2+3" and failed.iloc[0]["fork_step"] == 5
    assert failed.iloc[0]["status"] == "diverged" and np.isnan(failed.iloc[0]["loss_barrier"])
    with pytest.raises(ValueError, match="no run starts from a parent"):
        fork_barriers([runs[-1]])
    with pytest.raises(ValueError, match="splits .*not in the data"):
        fork_barriers(runs, splits=["holdout"])


def _fork_table():
    rows = []
    for step, base in ((0, 0.06), (10, 0.01)):
        for i, pair in enumerate(("0+1", "2+3", "4+5")):
            for layer, index, scale in (("all", 0, 1.0), ("1", 1, 0.0), ("3", 2, 0.05)):
                for split in ("train", "test"):
                    rows.append({"fork_step": step, "pair": pair, "layer": layer, "layer_index": index, "split": split,
                                 "status": "ok", "loss_barrier": scale * (base * 3 + 0.01 * i),
                                 "error_barrier": scale * (base + 0.01 * i), "error_a": 0.3, "error_b": 0.32})
    rows.append({"fork_step": 10, "pair": "6+7", "layer": "all", "layer_index": 0, "split": "test", "status": "diverged",
                 "loss_barrier": np.nan, "error_barrier": np.nan, "error_a": np.nan, "error_b": np.nan})
    return pd.DataFrame(rows)


def test_instability_and_layerwise_figures_summarise_pairs_by_hand():
    import matplotlib.pyplot as plt

    table = _fork_table()
    fig, plotted, summary = instability_barriers(None, None, {"forks": table})
    plt.close(fig)
    row = summary[(summary["fork_step"] == 0) & (summary["split"] == "test")].iloc[0]
    assert row["n_pairs"] == 3 and row["n_failed"] == 0
    assert row["error_barrier_mean"] == pytest.approx(0.07) and row["error_barrier_sd"] == pytest.approx(0.01)
    assert row["error_end"] == pytest.approx(0.31)
    row = summary[(summary["fork_step"] == 10) & (summary["split"] == "test")].iloc[0]
    assert row["n_pairs"] == 3 and row["n_failed"] == 1 and row["error_barrier_mean"] == pytest.approx(0.02)
    fig, _, layers = layerwise_barrier_heatmap(None, None, {"forks": table})
    plt.close(fig)
    row = layers[(layers["layer"] == "3") & (layers["fork_step"] == 0) & (layers["split"] == "train")].iloc[0]
    assert row["loss_barrier_mean"] == pytest.approx(0.05 * 0.19) and row["full_loss_barrier"] == pytest.approx(0.19)
    with pytest.raises(ValueError, match="each panel is"):
        instability_barriers(None, None, {"forks": table}, panels=[["test", "accuracy"]])


def test_matching_figure_summarises_per_width_and_alignment():
    import matplotlib.pyplot as plt

    rows = [{"width": w, "alignment": a, "pair": p, "split": "train", "status": "ok",
             "loss_barrier": (1.0 if a == "none" else 0.1 / w) + 0.01 * i, "error_barrier": 0.0, "error_a": 0.2, "error_b": 0.2}
            for w in (32, 64) for a in ("none", "weight matching") for i, p in enumerate(("0+1", "2+3"))]
    fig, _, summary = matching_barriers_vs_width(None, None, {"m": pd.DataFrame(rows)}, panels=[["train", "loss_barrier"]])
    plt.close(fig)
    row = summary[(summary["width"] == 64) & (summary["alignment"] == "weight matching")].iloc[0]
    assert row["n_pairs"] == 2 and row["loss_barrier_mean"] == pytest.approx(0.1 / 64 + 0.005)
    assert list(pair_summary(pd.DataFrame(rows), ["width"])["n_pairs"]) == [4, 4]


def test_layer_summary_gives_each_layer_the_whole_networks_barrier():
    summary = layer_summary(_fork_table())
    full = summary[summary["layer"] == "all"]
    assert (full["full_error_barrier"] == full["error_barrier_mean"]).all()


def test_bn_reset_recomputes_batchnorm_statistics_on_the_training_split_at_every_point(tmp_path):
    from descentlab.averaging import barrier_table, path_table
    from descentlab.models import cnn

    data_path, x, y = _data(tmp_path)
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = cnn((DIM,), CLASSES, channels=4, depth=1, batchnorm=True)
        net = _train(net.train(), x["train"], y["train"], steps=30, seed=seed)
        states.append({k: v.detach().clone() for k, v in net.state_dict().items()})
    runs = [_run(tmp_path, data_path, f"bn{s}", states[s], s) for s in (0, 1)]
    for run in runs:
        run.spec = dict(run.spec, model={"name": "cnn", "channels": 4, "depth": 1, "batchnorm": True})
    kept = matching_barriers(runs, splits=["test"], bn_reset=False)
    reset = matching_barriers(runs, splits=["test"], bn_reset=True)
    torch.manual_seed(0)
    model = cnn((DIM,), CLASSES, channels=4, depth=1, batchnorm=True)
    expected = barrier_table(path_table(model, states, {"test": (x["test"], y["test"])}, F.cross_entropy,
                                        n_points=11, bn_data=x["train"]))
    got = reset[reset["alignment"] == "none"].iloc[0]
    assert got["loss_barrier"] == pytest.approx(float(expected["loss_barrier"].iloc[0]), abs=1e-6)
    assert got["loss_barrier"] != pytest.approx(float(kept[kept["alignment"] == "none"]["loss_barrier"].iloc[0]), abs=1e-4)
