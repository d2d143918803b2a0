"""The workflow: lint, dry runs at every scale, and an end-to-end smoke run
in a temporary copy (every figure, nothing to redo, exact reruns, report)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "scripts", "profiles", "envs", "src")  # src: the schemas


def snakemake(cwd, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of the workflow, plus a study whose second run diverges."""
    root = tmp_path_factory.mktemp("wf")
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    diverging = {
        "name": "diverging",
        "title": "a run that diverges",
        "papers": ["none"],
        "base": {"dataset": {"name": "gaussian_mixture", "n_samples": 300, "dim": 8, "n_classes": 3},
                 "model": {"name": "mlp", "width": 8}, "steps": 30, "eval_every": 10},
        "scales": {"smoke": {}, "cpu": {}, "paper": {}},
        "axes": {"lr": [{"label": "fine", "set": {"optimizer": {"name": "sgd", "lr": 0.1}}},
                        {"label": "huge", "set": {"optimizer": {"name": "sgd", "lr": 1e6}}}]},
        # A claim that fails on purpose: reported as a result, not an error.
        "figures": [{"name": "curves", "kind": "learning_curves", "claims": [
            {"id": "all-converge", "text": "every run converges", "check": "all_rows",
             "options": {"holds_if": "status == 'ok'", "report": "status", "label": ["lr"]},
             "otherwise": "the huge learning rate diverges, as it should"}]}],
    }
    (root / "config" / "studies" / "diverging.yaml").write_text(yaml.safe_dump(diverging, sort_keys=False))
    (root / "config" / "studies" / "lineage.yaml").write_text(yaml.safe_dump(LINEAGE, sort_keys=False))
    return root


# Every way a run can start from another, through the workflow: a fork at a
# step with new data order, an exact continuation, a cooldown branch from each
# checkpoint, a fine-tune on another task with a new head, a refined schedule
# from its source run's gradient norms.
DATA = {"name": "gaussian_mixture", "n_samples": 300, "dim": 8, "n_classes": 3}
LINEAGE = {
    "name": "lineage",
    "title": "runs from runs",
    "papers": ["none"],
    "base": {"dataset": DATA, "model": {"name": "mlp", "width": 8}, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
             "steps": 30, "eval_every": 10, "log_every": 10},
    "parents": {
        "pretrain": {"set": {"steps": 20, "checkpoints": [10, 20], "instruments": [{"name": "grad_norm"}]}, "seed": 1},
        "cooled": {"set": {"steps": 26, "schedule": {"name": "wsd", "cooldown_fraction": 0.2},
                           "init": {"parent": "pretrain", "step": 20, "restore": "optimizer"}}},
    },
    "seeds": [1, 2],
    "scales": {"smoke": {}, "cpu": {}, "paper": {}},
    "axes": {"child": [
        {"label": "fork", "set": {"init": {"parent": "pretrain", "step": 10, "restore": "optimizer"}}},
        {"label": "continue", "set": {"init": {"parent": "pretrain", "step": 10, "restore": "all"}, "steps": 20}},
        {"label": "cooldown10", "set": {"init": {"parent": "pretrain", "step": 10, "restore": "optimizer"},
                                        "schedule": {"name": "wsd", "cooldown_fraction": 0.5}}},
        {"label": "cooldown20", "set": {"init": {"parent": "pretrain", "step": 20, "restore": "optimizer"},
                                        "schedule": {"name": "wsd", "cooldown_fraction": 0.3}}},
        {"label": "finetune", "set": {"init": {"parent": "pretrain", "step": "final", "restore": "weights", "exclude": ["5."]},
                                      "dataset": dict(DATA, n_classes=5), "optimizer": {"lr": 0.05}}},
        {"label": "refined", "set": {"schedule": {"name": "refined", "grad_norms": {"parent": "pretrain"}}}},
        {"label": "chain", "set": {"init": {"parent": "cooled", "step": "final", "restore": "weights"}}},
    ]},
    "figures": [{"name": "curves", "kind": "learning_curves"}],
}


def test_lint(workdir):
    out = snakemake(workdir, "--lint", check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("scale", ["cpu", "paper"])
def test_dry_run_builds_the_dag(workdir, scale):
    out = snakemake(workdir, "-n", "--config", f"scale={scale}")
    assert "figure" in out.stdout and "rule train:" in out.stdout and "checkpoint select_runs:" in out.stdout


def test_slurm_profile_dry_run_requests_a_gpu_per_training_job(workdir):
    out = snakemake(workdir, "-n", "--workflow-profile", "profiles/slurm")
    train_blocks = [b for b in out.stdout.split("\n\n") if "rule train:" in b]
    assert train_blocks and all("gpu=1" in b and "slurm_partition=gpu" in b for b in train_blocks)


def test_bad_study_fails_before_any_job(workdir, tmp_path):
    bad = tmp_path / "studies"
    shutil.copytree(workdir / "config" / "studies", bad)
    path = bad / "diverging.yaml"
    path.write_text(path.read_text().replace("name: sgd", "name: sgdd"))
    out = snakemake(workdir, "-n", "--config", f"studies_dir={bad}", check=False)
    assert out.returncode != 0
    assert "'sgdd' is not one of" in out.stderr + out.stdout and "did you mean 'sgd'" in out.stderr + out.stdout
    out = snakemake(workdir, "-n", "--config", "scale=huge", check=False)
    assert out.returncode != 0 and "huge" in out.stderr + out.stdout


@pytest.mark.slow
def test_smoke_end_to_end(workdir):
    snakemake(workdir, "--cores", "2", "--config", "scale=smoke")
    results = workdir / "results"
    studies = sorted((workdir / "config" / "studies").glob("*.yaml"))
    assert len(studies) >= 10
    for path in studies:  # every figure of every study
        for fig in yaml.safe_load(path.read_text())["figures"]:
            for ext in ("pdf", "png", "csv", "summary.csv"):
                assert (results / "figures" / path.stem / f"{fig['name']}.{ext}").stat().st_size > 0, (path.stem, fig)
    index = pd.read_csv(results / "runs" / "index.csv")
    assert index.run_id.is_unique and (index.study == "diverging").sum() == 2

    # The diverging run is recorded, drawn, and did not fail the workflow.
    summary = pd.read_csv(results / "figures" / "diverging" / "curves.summary.csv")
    assert sorted(summary.status) == ["diverged", "ok"]
    claims = pd.read_csv(results / "claims.csv", keep_default_na=False)
    failed = claims[claims.study == "diverging"].iloc[0]
    assert failed.holds == "no" and failed.note == "the huge learning rate diverges, as it should"
    assert "huge: diverged !" in failed.numbers and failed.scale == "smoke"
    assert set(claims.holds) <= {"yes", "no"}

    # Runs decided by data (the benchmark's tuned reruns) are runs like any other.
    assert {"sweep", "parent", "rerun"} <= set(index.role) or {"sweep", "rerun"} <= set(index.role)
    reruns = index[(index.role == "rerun") & (index.study == "optimizer-benchmark")]
    assert len(reruns) == 54 and set(reruns.seed) == {1}  # 2 problems x 27 optimizers, seed 1 at smoke
    assert all((results / "runs" / rid / "status.json").exists() for rid in reruns.run_id)

    # Runs from runs: parents trained first; the exact continuation equals its parent.
    lineage = index[index.study == "lineage"]
    parent, cooled = lineage[lineage.role == "parent"].sort_values("steps").run_id
    assert lineage.set_index("run_id").loc[cooled, "init.run"] == parent  # a chain: pretrain -> cooled -> chain
    assert (lineage["init.run"] == cooled).sum() == 2
    cont = [rid for rid in lineage.run_id if '"restore": "all"' in (results / "runs" / rid / "spec.json").read_text()]
    assert len(cont) == 2
    import torch

    # Bit for bit when both train the same way (tests/test_init_from_run.py); here
    # the children train as one batch, the lone parent by itself: float32 rounding.
    final = torch.load(results / "runs" / parent / "final.pt", weights_only=True)
    for rid in cont:
        child = torch.load(results / "runs" / rid / "final.pt", weights_only=True)
        assert all(torch.allclose(final[k], child[k], rtol=1e-4, atol=1e-6) for k in final)

    # Every job left its benchmark record; the per-study time table reads them.
    from descentlab.timings import DATA_ROW, per_study, read_job_benchmarks

    jobs = read_job_benchmarks(results)
    assert {"train", "selections", "analyses", "figures", "data"} <= set(jobs.stage)
    timings = per_study(jobs).set_index("study")
    assert {"optimizer-benchmark", "lineage", DATA_ROW} <= set(timings.index)
    assert (timings.cpu_s > 0).all() and timings.loc["lineage", "train_cpu_s"] > 0

    # A second invocation has nothing to do.
    again = snakemake(workdir, "-n", "--config", "scale=smoke")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout

    # Blast radius: changing one value in one study reruns that study's
    # changed job and what reads it, nothing of any other study.
    study = workdir / "config" / "studies" / "diverging.yaml"
    study.write_text(study.read_text().replace("lr: 0.1", "lr: 0.2"))
    jobs = planned_jobs(snakemake(workdir, "-n", "--config", "scale=smoke"))
    assert {rule for rule, _ in jobs} == {"train", "figure", "claims", "run_index", "all"}, jobs
    assert studies_of(jobs) == {"diverging"}, jobs
    assert sum(rule == "train" for rule, _ in jobs) == 1

    # Adding a study with runs of its own reruns nothing that exists.
    new = yaml.safe_load(study.read_text())
    new.update(name="another", axes={"lr": [{"label": "mid", "set": {"optimizer": {"name": "sgd", "lr": 0.05}}}]})
    new["figures"][0].pop("claims")
    (workdir / "config" / "studies" / "another.yaml").write_text(yaml.safe_dump(new, sort_keys=False))
    jobs = planned_jobs(snakemake(workdir, "-n", "--config", "scale=smoke"))
    assert studies_of(jobs) == {"diverging", "another"}, jobs  # diverging: still pending from above
    (workdir / "config" / "studies" / "another.yaml").unlink()

    # The changed job retrains exactly the run that changed; its other run
    # rewrites its outputs from its saved final state without training.
    shutil.rmtree(results / "logs" / "train")  # keep only this invocation's training logs
    snakemake(workdir, "--cores", "2", "--config", "scale=smoke")
    log = "".join(p.read_text() for p in (results / "logs" / "train").glob("*.log"))
    trained = re.findall(r"INFO (\S+): ok after 30 steps \(resumed from 0\)", log)
    restored = re.findall(r"INFO (\S+): diverged after (\d+) steps \(resumed from (\d+)\)", log)
    assert len(trained) == 1 and "-sgd-lr0.2-" in trained[0], log
    assert len(restored) == 1 and restored[0][1] == restored[0][2] != "0", log

    # A truncated artifact is named and reruns its job, which rewrites it.
    victim = results / "runs" / trained[0] / "final.pt"
    victim.write_bytes(victim.read_bytes()[:100])
    out = snakemake(workdir, "-n", "--config", "scale=smoke")
    assert f"{victim.relative_to(workdir)} has 100 bytes" in out.stdout + out.stderr
    assert {rule for rule, _ in planned_jobs(out)} == {"train", "figure", "claims", "all"}
    snakemake(workdir, "--cores", "2", "--config", "scale=smoke")
    assert victim.stat().st_size > 100
    assert "Nothing to be done" in (lambda o: o.stdout + o.stderr)(snakemake(workdir, "-n", "--config", "scale=smoke"))

    # The report builds from the run's metadata.
    snakemake(workdir, "--report", "results/report.zip", "--config", "scale=smoke")
    assert (results / "report.zip").stat().st_size > 0


def studies_of(jobs):
    """The studies whose jobs a dry run lists (a training job's id starts with its study)."""
    out = set()
    for rule, wildcards in jobs:
        w = dict(wildcards)
        if "study" in w or "group" in w:
            out.add(w.get("study") or w["group"].split("+")[0])
        elif wildcards:
            out.add(f"{rule}:{w}")  # a job of no study (e.g. data): reported as is
    return out


def planned_jobs(proc):
    """(rule, wildcards) of every job a dry run lists."""
    jobs, rule = [], None
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith(("rule ", "checkpoint ")) and line.endswith(":"):
            if rule is not None:
                jobs.append((rule, ()))
            rule = line.split()[1].rstrip(":")
        elif line.startswith("wildcards:") and rule is not None:
            pairs = tuple(tuple(kv.split("=", 1)) for kv in line[len("wildcards:"):].strip().split(", "))
            jobs.append((rule, pairs))
            rule = None
    if rule is not None:
        jobs.append((rule, ()))
    return jobs
