"""keep_freed_memory: a batched step's activations, freed and allocated again
every step, reuse the heap instead of being page-faulted in from the kernel.

Each check runs in its own interpreter: the thresholds are process-wide."""

import platform
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys
import torch
from descentlab.data import build_dataset
from descentlab.spec import validate
from descentlab.train.allocator import keep_freed_memory
from descentlab.train.stack import ModelStack
from descentlab.train.training import Training
torch.set_num_threads(1)
kept = sys.argv[1] == "keep" and keep_freed_memory() and keep_freed_memory()  # the second call: a no-op saying so
spec = {"dataset": {"name": "digits"}, "model": {"name": "cnn", "channels": 16, "depth": 2, "batchnorm": True},
        "optimizer": {"name": "sgd", "lr": 0.1}, "batch_size": 64, "steps": 10}
data = build_dataset(spec["dataset"])
runs = [Training(validate(dict(spec, seed=k)), data, torch.device("cpu")) for k in range(16)]
stack = ModelStack(runs, runs[0].loss_fn)
x, y = runs[0].x["train"], runs[0].y["train"]
def step():  # a batched training step of 16 digits-CNN runs: 4 MB activations, freed at its end
    idx = torch.stack([run.sampler.next() for run in runs])
    stack.loss_and_grads(x[idx], y[idx], batched_x=True, inactive=[])
for _ in range(5):  # warm-up: the heap grows (and may grow once more later: measured over 20 steps)
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 20)
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


def probe(setting: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, setting], check=True, capture_output=True, text=True)
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


@glibc
def test_freed_memory_is_reused_not_faulted_in_again():
    kept, faults_kept = probe("keep")
    _, faults_default = probe("default")
    assert kept
    # with glibc's defaults a step faults in thousands of pages (measured 4,500-7,400)
    assert faults_default > 1000
    # kept: none, but for an occasional one-off growth of the heap (up to ~2,000 pages seen)
    assert faults_kept < 0.1 * faults_default


def test_elsewhere_than_glibc_it_does_nothing(monkeypatch):
    from descentlab.train import allocator

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory() is False
