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
        "figures": [{"name": "curves", "kind": "learning_curves"}],
    }
    (root / "config" / "studies" / "diverging.yaml").write_text(yaml.safe_dump(diverging, sort_keys=False))
    return root


def test_lint(workdir):
    out = snakemake(workdir, "--lint", check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("scale", ["cpu", "paper"])
def test_dry_run_builds_the_dag(workdir, scale):
    out = snakemake(workdir, "-n", "--config", f"scale={scale}")
    assert "figure" in out.stdout and "train_" in out.stdout


def test_slurm_profile_dry_run_requests_a_gpu_per_training_job(workdir):
    out = snakemake(workdir, "-n", "--workflow-profile", "profiles/slurm")
    train_blocks = [b for b in out.stdout.split("\n\n") if "rule train_" in b]
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
    assert index.run_id.is_unique and index.run_id.str.contains("-adamw-lr0.002-").sum() == 2

    # The diverging run is recorded, drawn, and did not fail the workflow.
    summary = pd.read_csv(results / "figures" / "diverging" / "curves.summary.csv")
    assert sorted(summary.status) == ["diverged", "ok"]

    # A second invocation has nothing to do.
    again = snakemake(workdir, "-n", "--config", "scale=smoke")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout

    # Changing one spec value retrains exactly the runs that changed: their
    # job reruns, and its unchanged runs rewrite their outputs from their
    # saved final state without training.
    study = workdir / "config" / "studies" / "optimizer-curves.yaml"
    study.write_text(study.read_text().replace("weight_decay: 0.05", "weight_decay: 0.1"))
    changed = snakemake(workdir, "-n", "--config", "scale=smoke")
    jobs = [line.split()[1].rstrip(":") for line in changed.stdout.splitlines() if line.startswith("rule ")]
    # Training jobs that share the dataset rerun (their unchanged runs are
    # restored, not retrained), and so do the tables and figures downstream.
    assert "prepare_data" not in jobs and {"all", "figure", "run_index"} <= set(jobs)
    assert any(j.startswith("train_mnist1d") for j in jobs) and not any(j.startswith("train_digits") for j in jobs)
    shutil.rmtree(results / "logs" / "train")  # keep only this invocation's training logs
    snakemake(workdir, "--cores", "2", "--config", "scale=smoke")
    log = "".join(p.read_text() for p in (results / "logs" / "train").glob("*.log"))
    trained = re.findall(r"INFO (\S+): ok after 60 steps \(resumed from 0\)", log)
    restored = re.findall(r"INFO (\S+): ok after 60 steps \(resumed from 60\)", log)
    assert len(trained) == 2 and all("-adamw-" in r for r in trained)
    assert len(restored) + len(trained) == len(set(restored + trained)) and not any("-adamw-" in r for r in restored)

    # The report builds from the run's metadata.
    snakemake(workdir, "--report", "results/report.zip", "--config", "scale=smoke")
    assert (results / "report.zip").stat().st_size > 0
