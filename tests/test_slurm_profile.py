"""The SLURM profile end to end, with fake SLURM commands on PATH.

``profiles/slurm`` runs through the real snakemake-executor-plugin-slurm; only
``sbatch``, ``sacct``, ``srun`` and the account/cluster queries are stand-ins
(tests/slurm_shim), which run each job at once on this machine. A tiny study
at smoke scale on the CPU: every job must succeed, and the submissions must
ask for what the profile promises (training: one GPU on the gpu partition;
the rest: the cpu partition, no GPU).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHIM = Path(__file__).resolve().parent / "slurm_shim"
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "scripts", "profiles", "envs", "src")  # src: the schemas

TINY_STUDY = {
    "name": "tiny",
    "title": "two runs on a tiny problem",
    "papers": ["none"],
    "base": {"dataset": {"name": "gaussian_mixture", "n_samples": 300, "dim": 8, "n_classes": 3},
             "model": {"name": "mlp", "width": 8}, "steps": 30, "eval_every": 10},
    "scales": {"smoke": {}, "cpu": {}, "paper": {}},
    "axes": {"optimizer": [{"label": "SGD", "set": {"optimizer": {"name": "sgd", "lr": 0.1}}},
                           {"label": "Adam", "set": {"optimizer": {"name": "adam", "lr": 0.01}}}]},
    # The better optimizer rerun with another seed: a job decided by data,
    # sent to a GPU like every training job.
    "selections": [{"name": "best", "group_by": [], "seeds": [1]}],
    "figures": [{"name": "curves", "kind": "learning_curves"}],
}


def fake_slurm_bin(directory: Path) -> Path:
    """Executables named like the SLURM commands the plugin calls."""
    directory.mkdir()
    scripts = {
        "sbatch": f'exec "{sys.executable}" "{SHIM / "sbatch.py"}" "$@"',
        "sacct": f'exec "{sys.executable}" "{SHIM / "sacct.py"}" "$@"',
        "srun": f'exec "{sys.executable}" "{SHIM / "srun.py"}" "$@"',
        "sacctmgr": "echo your_account",
        "sshare": "echo your_account",
        "sinfo": "exit 0",
        "squeue": "exit 0",
        "scontrol": "exit 0",
    }
    for name, body in scripts.items():
        path = directory / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return directory


@pytest.mark.slow
def test_slurm_profile_runs_a_study_with_fake_slurm(tmp_path):
    workdir = tmp_path / "wf"
    workdir.mkdir()
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, workdir / name)
    (workdir / "config" / "studies" / "tiny.yaml").write_text(yaml.safe_dump(TINY_STUDY, sort_keys=False))
    state = tmp_path / "slurm"
    env = dict(os.environ, FAKE_SLURM_DIR=str(state),
               PATH=f"{fake_slurm_bin(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm",
         "--config", "scale=smoke", "device=cpu", 'studies=["tiny"]',
         "--slurm-init-seconds-before-status-checks", "1"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    submissions = [json.loads(line) for line in (state / "sbatch.jsonl").read_text().splitlines()]
    train = [a for a in submissions if any(x.startswith("rule_train_") for x in a)]
    assert len(train) == 2  # the sweep's job and the selection's
    others = [a for a in submissions if a not in train]
    assert train and others
    for args in train:
        assert "--gpus=1" in args and args[args.index("-p") + 1] == "gpu", args
        assert not any(x.startswith("--gres") for x in args), "GPU requested twice"
        assert args[args.index("--mem") + 1] == "32000" and args[args.index("-A") + 1] == "your_account"
    for args in others:
        assert args[args.index("-p") + 1] == "cpu" and not any(x.startswith("--gpus") for x in args), args

    results = workdir / "results"
    statuses = [json.loads(p.read_text())["status"] for p in results.glob("runs/*/status.json")]
    assert statuses == ["ok", "ok", "ok"]
    assert (results / "figures" / "tiny" / "curves.png").stat().st_size > 0
