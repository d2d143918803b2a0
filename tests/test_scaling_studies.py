"""Analyses and figures of the chinchilla-fit and loss-to-loss studies
(descentlab.analyses.scaling, descentlab.plots.scaling), on hand-made inputs
with known answers."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from descentlab.analyses import scaling as sa
from descentlab.scaling import approach2_isoflop, compute_optimal_allocation

DATA = Path(__file__).resolve().parent / "data" / "chinchilla_svg_extracted.csv"
LAW = dict(E=1.5, A=40.0, B=300.0, alpha=0.4, beta=0.45)


def law(N, D, E=1.5, A=40.0, B=300.0, alpha=0.4, beta=0.45):
    return E + A / N**alpha + B / D**beta


def isoflop_points(noise=0.0, seed=0):
    """An isoFLOP grid (six sizes x four budgets, C = 6ND exact) of losses from LAW."""
    rng = np.random.default_rng(seed)
    sizes = np.geomspace(2e3, 3e5, 6)
    rows = []
    for k, c in enumerate((1e11, 4e11, 1.6e12, 6.4e12)):
        for i, n in enumerate(sizes):
            d = c / (6 * n)
            rows.append({"run_id": f"r{k}{i}", "model": f"m{i}", "budget": str(k), "seed": 0, "N": n, "D": d, "C": c,
                         "loss": law(n, d) * np.exp(noise * rng.normal()), "status": "ok"})
    return pd.DataFrame(rows)


@pytest.fixture
def fake_points(monkeypatch):
    def install(points):
        monkeypatch.setattr(sa, "run_points", lambda runs, **kw: points.copy())
    return install


# -- isoFLOP --------------------------------------------------------------------------------

def test_isoflop_vertex_is_the_known_parabola_minimum():
    x = np.linspace(0.0, 4.0, 7)
    v = sa.isoflop_vertex(x, 3.0 * (x - 1.3) ** 2 + 2.0)
    assert v["log_N_opt"] == pytest.approx(1.3, abs=1e-9) and v["loss_opt"] == pytest.approx(2.0, abs=1e-9)
    assert v["interior"]
    assert not sa.isoflop_vertex(x, -((x - 1.3) ** 2))["interior"]  # a maximum
    assert not sa.isoflop_vertex(x, (x - 5.0) ** 2)["interior"]  # a minimum beyond the sampled sizes


def test_isoflop_analysis_matches_the_library_and_the_closed_form(fake_points):
    points = isoflop_points()
    fake_points(points)
    table = sa.isoflop([], budget_axis="budget")
    vertices = table[table["part"] == "vertex"].sort_values("C")
    assert vertices["interior"].all()
    lib = approach2_isoflop(points["N"], points["D"], points["loss"], budget=points["budget"].to_numpy())
    assert vertices["N_opt"].to_numpy() == pytest.approx(lib.points.sort_values("C")["N_opt"].to_numpy(), rel=1e-9)
    frontier = table[table["part"] == "frontier"].iloc[0]
    assert frontier["a"] == pytest.approx(lib.a, rel=1e-12)
    # the parabola's vertex is near the law's own optimum (a parabola in log N only approximates it)
    n_star, _ = compute_optimal_allocation(vertices["C"].to_numpy(), A=LAW["A"], B=LAW["B"], alpha=LAW["alpha"], beta=LAW["beta"])
    assert np.abs(np.log(vertices["N_opt"].to_numpy() / n_star)).max() < 0.35
    assert frontier["a"] == pytest.approx(LAW["beta"] / (LAW["alpha"] + LAW["beta"]), abs=0.06)  # 0.478 vs 0.529: the parabolas' bias


def test_isoflop_records_a_budget_without_an_interior_minimum_instead_of_raising(fake_points):
    points = isoflop_points()
    smallest_budget = points["budget"] == "0"
    points.loc[smallest_budget, "loss"] = 5.0 - 0.1 * np.log(points.loc[smallest_budget, "N"])  # falls with N throughout
    fake_points(points)
    table = sa.isoflop([], budget_axis="budget")
    v = table[table["part"] == "vertex"].set_index("budget")
    assert not v.loc["0", "interior"] and np.isnan(v.loc["0", "N_opt"]) and v.loc["0", "note"]
    assert v.drop(index="0")["interior"].all()
    assert (table["part"] == "frontier").sum() == 1  # the three interior budgets still give a frontier


def test_isoflop_names_a_missing_budget_axis(fake_points):
    fake_points(isoflop_points())
    with pytest.raises(ValueError, match="budget_axis 'tokens'"):
        sa.isoflop([], budget_axis="tokens")


# -- held-out split ---------------------------------------------------------------------------

def test_held_out_mask_takes_the_largest_groups_or_runs():
    points = isoflop_points()
    by_budget = sa._held_out_mask(points, 1, "budget")
    assert set(points.loc[by_budget, "budget"]) == {"3"} and by_budget.sum() == 6
    by_model = sa._held_out_mask(points, 2, "model", by="N")
    assert set(points.loc[by_model, "model"]) == {"m4", "m5"}
    single = sa._held_out_mask(points, 3, None, by="N")
    assert single.sum() == 4  # ties at the boundary go to the held-out side (four runs of the largest N)
    assert not sa._held_out_mask(points, 0, None).any()
    with pytest.raises(ValueError, match="leaves nothing"):
        sa._held_out_mask(points, 4, "budget")
    with pytest.raises(ValueError, match="must be one of"):
        sa._held_out_mask(points, 1, "budget", by="loss")


# -- Chinchilla fit ----------------------------------------------------------------------------

def test_chinchilla_fit_recovers_a_known_law_and_predicts_the_held_out_budget(fake_points):
    points = isoflop_points()
    fake_points(points)
    table = sa.chinchilla_fit([], budget_axis="budget", hold_out=1, n_resamples=20, starts="small")
    params = table[(table["part"] == "parameter") & (table["fit"] == "all")].set_index("parameter")
    for name in ("E", "alpha", "beta"):
        assert params.loc[name, "estimate"] == pytest.approx(LAW[name], rel=1e-3), name
    for name in ("A", "B"):
        assert params.loc[name, "estimate"] == pytest.approx(LAW[name], rel=1e-2), name
    assert params.loc["a", "estimate"] == pytest.approx(LAW["beta"] / (LAW["alpha"] + LAW["beta"]), rel=1e-3)
    assert (params["lower"] <= params["estimate"] + 1e-9).all() and (params["estimate"] <= params["upper"] + 1e-9).all()
    runs = table[table["part"] == "run"]
    held = runs[runs["held_out"].astype(bool)]
    assert set(held["budget"]) == {"3"} and len(held) == 6
    assert np.abs(held["relative_error"]).max() < 1e-3  # noiseless: the smaller budgets pin the law down
    conv = table[table["part"] == "convergence"]
    assert set(conv["fit"]) == {"all", "without held-out"} and (conv["grad_norm"] < 1e-4).all()


def test_chinchilla_fit_leaves_diverged_runs_out_of_the_fit(fake_points):
    points = isoflop_points()
    points.loc[3, ["loss", "status"]] = [np.nan, "diverged"]
    fake_points(points)
    table = sa.chinchilla_fit([], budget_axis="budget", hold_out=1, n_resamples=5, starts="small")
    conv = table[(table["part"] == "convergence") & (table["fit"] == "all")].iloc[0]
    assert conv["n_points"] == 23
    runs = table[table["part"] == "run"].set_index("run_id")
    assert runs.loc["r03", "status"] == "diverged" and not runs.loc["r03", "held_out"]


def test_chinchilla_fit_on_the_public_data_reproduces_the_replication():
    table = sa.chinchilla_fit([], csv=str(DATA), hold_out=24, n_resamples=20, starts="small")
    params = table[(table["part"] == "parameter") & (table["fit"] == "all")].set_index("parameter")
    ref = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
    for name in ("E", "alpha", "beta"):
        assert params.loc[name, "estimate"] == pytest.approx(ref[name], rel=0.01), name
    for name in ("A", "B"):
        assert params.loc[name, "estimate"] == pytest.approx(ref[name], rel=0.05), name
    runs = table[table["part"] == "run"]
    held = runs["held_out"].astype(bool)
    assert len(runs) == 240 and held.sum() == 24
    assert runs.loc[held, "C"].min() >= runs.loc[~held, "C"].max()


def test_the_shipped_public_data_is_the_test_data():
    shipped = sa.public_csv_path(sa.PUBLIC_CSV)
    assert shipped.read_bytes() == DATA.read_bytes()
    assert sa.public_csv_path("a/b.csv") == Path("a/b.csv")


def test_chinchilla_fit_names_a_missing_csv():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sa.chinchilla_fit([], csv="no/such.csv")


# -- power law -----------------------------------------------------------------------------

def test_power_law_fit_recovers_a_known_law(fake_points):
    points = isoflop_points()
    points["loss"] = 2.0 + 30.0 * points["C"] ** -0.2
    fake_points(points)
    table = sa.power_law_fit([], x="C", n_resamples=10)
    params = table[table["part"] == "parameter"].set_index("parameter")
    assert params.loc["alpha", "estimate"] == pytest.approx(0.2, rel=1e-3)
    assert params.loc["E", "estimate"] == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(ValueError, match="x must be one of"):
        sa.power_law_fit([], x="loss")


# -- loss-to-loss ------------------------------------------------------------------------------

def test_encode_in_vocabulary_removes_unknown_characters():
    ids, removed = sa.encode_in_vocabulary("ab{c}a", ["a", "b", "c"])
    assert ids.tolist() == [0, 1, 2, 0] and removed == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="no character"):
        sa.encode_in_vocabulary("xyz", ["a"])


def test_second_text_sources():
    text = sa.second_text("pydoc")
    assert len(text) > 100_000 and "lambda" in text
    with pytest.raises(ValueError, match="must be 'pydoc' or 'milton'"):
        sa.second_text("hamlet")
    with pytest.raises(ValueError, match="no archive"):
        sa.second_text("pydoc", archive="x.tar.gz")


class Bigram(torch.nn.Module):
    """Logits of the next token from a table indexed by the current one."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[x]


def test_sequence_loss_matches_a_brute_force_float64_sum():
    torch.manual_seed(0)
    V, table = 5, torch.randn(5, 5)
    x, y = torch.randint(0, V, (7, 4)), torch.randint(0, V, (7, 4))
    expected = np.mean([-np.log(np.exp(table[a].double().numpy())[b] / np.exp(table[a].double().numpy()).sum())
                        for a, b in zip(x.flatten().tolist(), y.flatten().tolist())])
    assert sa.sequence_loss(Bigram(table), x, y, batch=3) == pytest.approx(expected, rel=1e-9)
    assert sa.sequence_loss(Bigram(torch.zeros(V, V)), x, y) == pytest.approx(np.log(V), rel=1e-12)


def test_loss_to_loss_fits_on_the_smaller_models_and_predicts_the_largest(fake_points, monkeypatch):
    points = isoflop_points()
    points["loss"] = 1.2 + 50.0 * points["N"] ** -0.3 + 80.0 * points["D"] ** -0.3
    truth = dict(K=1.7, kappa=1.3, E0=1.0, E1=1.8)
    second = {r.run_id: truth["K"] * (r.loss - truth["E0"]) ** truth["kappa"] + truth["E1"] for r in points.itertuples()}
    fake_points(points)
    data = SimpleNamespace(info={"chars": list("abcdefgh\n ")}, input_shape=(4,))
    runs = [SimpleNamespace(run_id=r, load=lambda device="cpu", r=r: (r, data)) for r in points["run_id"]]
    monkeypatch.setattr(sa, "sequence_loss", lambda model, x, y: second[model])
    monkeypatch.setattr(sa, "second_text", lambda source, archive=None: "abc def\ngh{}" * 50)
    table = sa.loss_to_loss(runs, windows=8, hold_out=1, hold_out_axis="model", hold_out_by="N")
    rows = table[table["part"] == "run"]
    held = rows[rows["held_out"].astype(bool)]
    assert set(held["model"]) == {"m5"} and len(held) == 4
    assert np.abs(held["relative_error"]).max() < 1e-4
    assert rows["removed_fraction"].iloc[0] == pytest.approx(2 / 12)
    params = table[(table["part"] == "parameter") & (table["fit"] == "all")].set_index("parameter")["estimate"]
    for name, value in truth.items():
        assert params[name] == pytest.approx(value, rel=1e-3), name


# -- figures ---------------------------------------------------------------------------------

def test_chinchilla_panels_summary_reads_the_analyses(fake_points):
    from descentlab.plots.scaling import chinchilla_panels

    points = isoflop_points(noise=0.005)
    fake_points(points)
    tables = {"isoflop": sa.isoflop([], budget_axis="budget"),
              "fit": sa.chinchilla_fit([], budget_axis="budget", hold_out=1, n_resamples=10)}
    tables["public"] = sa.chinchilla_fit([], csv=str(DATA), hold_out=24, n_resamples=5)
    fig, plotted, summary = chinchilla_panels(None, None, tables, budget_axis="budget", size_axis="model")
    s = summary.set_index(["source", "quantity"])
    fit_runs = tables["fit"][tables["fit"]["part"] == "run"]
    held = fit_runs[fit_runs["held_out"].astype(bool)]
    assert s.loc[("ours", "held-out mean |relative error|"), "estimate"] == pytest.approx(np.abs(held["relative_error"]).mean())
    assert s.loc[("public", "E"), "reference"] == 1.8172
    frontier = tables["isoflop"][tables["isoflop"]["part"] == "frontier"].iloc[0]
    assert s.loc[("ours", "a (Approach 2)"), "estimate"] == pytest.approx(frontier["a"])
    assert s.loc[("ours", "isoFLOP budgets with an interior minimum"), "estimate"] == 4
    assert len(plotted) == 24
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_loss_to_loss_figure_summary_has_one_row_per_run():
    from descentlab.plots.scaling import loss_to_loss_figure

    points = isoflop_points()
    l0 = points["loss"].to_numpy()
    rows = points.rename(columns={"loss": "loss0"}).assign(part="run", loss1=2.0 * (l0 - 1.0) ** 1.2 + 1.5,
                                                          held_out=points["model"] == "m5")
    rows["predicted"] = np.where(rows["held_out"], rows["loss1"] * 1.01, np.nan)
    rows["predicted_all"] = rows["loss1"]
    rows["relative_error"] = rows["predicted"] / rows["loss1"] - 1
    params = pd.DataFrame([{"part": "parameter", "fit": "all", "parameter": p, "estimate": v}
                           for p, v in (("K", 2.0), ("kappa", 1.2), ("E0", 1.0), ("E1", 1.5))])
    fig, plotted, summary = loss_to_loss_figure(None, None, {"l2l": pd.concat([rows, params], ignore_index=True)})
    assert len(summary) == 24 and summary["held_out"].sum() == 4
    assert summary.loc[summary["held_out"], "relative_error"].to_numpy() == pytest.approx(0.01)
    import matplotlib.pyplot as plt
    plt.close(fig)
