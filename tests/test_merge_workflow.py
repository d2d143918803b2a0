"""The merge stage in the workflow: a tiny study with merges runs end to end at
smoke scale, and changing one merge's options reruns that merge's job only (a
dry run lists it, the figure and the claims), leaving the other merged models'
files untouched."""

import copy
import json
import shutil

import pandas as pd
import pytest
import yaml

from test_workflow import ROOT, WORKFLOW_FILES, planned_jobs, snakemake

DATA = {"name": "gaussian_mixture", "n_samples": 300, "dim": 8, "n_classes": 3}
SOUPS = {
    "name": "soupy",
    "title": "merges of fine-tunings",
    "papers": ["none"],
    "base": {"dataset": DATA, "model": {"name": "mlp", "width": 8}, "optimizer": {"name": "sgd", "lr": 0.1},
             "steps": 20, "eval_every": 0, "log_every": 10,
             "init": {"parent": "pre", "step": "final", "restore": "weights"}},
    "parents": {"pre": {"set": {"steps": 30}, "seed": 9}},
    "seeds": [0, 1],
    "scales": {"smoke": {}, "cpu": {}, "paper": {}},
    "axes": {"ft": [{"label": "a", "set": {"optimizer": {"lr": 0.05}}},
                    {"label": "b", "set": {"optimizer": {"lr": 0.2}}}]},
    "merges": [
        {"name": "uniform-soup", "rule": "uniform", "per": ["seed"]},
        {"name": "ties", "rule": "ties", "per": ["seed"], "options": {"density": 0.5}},
    ],
    "figures": [{"name": "soups", "kind": "soup_scatter", "options": {"y_split": "val", "x_split": "test"},
                 "claims": [{"id": "greedy", "text": "t", "check": "all_rows",
                             "options": {"where": "model == 'uniform-soup'", "holds_if": "test_accuracy >= 0"}}]}],
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wfm")
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    studies = root / "config" / "studies"
    shutil.rmtree(studies)
    studies.mkdir()
    (studies / "soupy.yaml").write_text(yaml.safe_dump(SOUPS, sort_keys=False))
    return root


def merge_dirs(results):
    return {p.name: p.stat().st_mtime_ns for p in (results / "merges").iterdir() if p.name != "jobs"}


def test_merges_run_cache_and_rerun_alone(workdir):
    results = workdir / "results"
    snakemake(workdir, "--cores", "2", "--config", "scale=smoke")
    dirs = merge_dirs(results)
    assert len(dirs) == 4  # two declarations x two seeds
    for name in dirs:
        status = json.loads((results / "merges" / name / "status.json").read_text())
        assert status["status"] == "ok"
    summary = pd.read_csv(results / "figures" / "soupy" / "soups.summary.csv")
    assert sorted(summary["model"].unique()) == ["best-single", "ties", "uniform-soup"]
    out = snakemake(workdir, "-n", "--config", "scale=smoke")
    assert "Nothing to be done" in out.stdout + out.stderr

    changed = copy.deepcopy(SOUPS)
    changed["merges"][1]["options"]["density"] = 0.3
    (workdir / "config" / "studies" / "soupy.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    jobs = planned_jobs(snakemake(workdir, "-n", "--config", "scale=smoke"))
    assert sorted(jobs) == sorted([("merge", (("study", "soupy"), ("merge", "ties"))),
                                   ("figure", (("study", "soupy"), ("figure", "soups"))), ("claims", ()), ("all", ())])
    snakemake(workdir, "--cores", "2", "--config", "scale=smoke")
    after = merge_dirs(results)
    kept = {k: v for k, v in dirs.items() if k.startswith("uniform")}
    assert all(after[k] == v for k, v in kept.items())  # the uniform soups were not touched
    new = sorted(set(after) - set(dirs))
    assert len(new) == 2 and all(n.startswith("ties-") for n in new)
    spec = json.loads((results / "merges" / new[0] / "spec.json").read_text())
    assert spec["options"] == {"density": 0.3}
