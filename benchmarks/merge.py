"""Merge timings and peak memory: descentlab.averaging against mergekit, and weight-matching time vs width.

Merges: uniform soup, TIES (density 0.2) and DARE (drop 0.9, summed as task
arithmetic) over N = 8 and 32 fine-tuned checkpoints of a ~1M-parameter MLP
(5 Linear layers, 1,050,880 parameters, float32), plus the pretrained base for
TIES and DARE. The checkpoints are raw state-dict files (``torch.save``) in a
scratch folder; every tool reads the SAME files:

- ``ours``: ``uniform_soup(paths)``, ``ties_merge(base, paths)``,
  ``dare_merge(base, paths, combine="task_arithmetic")``: they stream the files.
- ``mergekit``: mergekit 0.1.5's merge-method objects (``linear``, ``ties``,
  ``dare_linear`` from ``mergekit.merge_methods.registry``) called tensor by
  tensor on mergekit's own loaders (``mergekit.io.loader.TensorLoader``), as
  its executor does. Its ``mergekit.merge``/``run_merge`` entry point needs
  ``transformers`` (architecture detection), which is not installed, so the
  task graph around the methods is not measured. Two loaders:
  ``mergekit`` = its default (``torch.load`` of every file, all kept open as
  its loader cache does), ``mergekit-lazy`` = ``--lazy-unpickle`` (tensors read
  from the zip one at a time).
- ``stack-all`` (uniform only): the plain in-memory anchor, load all N,
  ``torch.stack``, mean.

mergekit is installed only for this benchmark, never as a project dependency:
    python -m venv --system-site-packages /tmp/mkvenv
    /tmp/mkvenv/bin/pip install --no-deps mergekit==0.1.5 safetensors accelerate
and its site-packages is APPENDED to ``sys.path`` of the mergekit workers
(so the project's torch is the one used).

Each measurement runs in its own process (one torch thread): after imports and
an untimed warm-up merge of the first two files, it resets the kernel's peak-RSS
counter (``/proc/self/clear_refs``), merges, and reports wall time and peak RSS
above the RSS just before the merge (the merged result included). Tools
alternate round by round (ours, mergekit, mergekit-lazy, stack-all, ours, ...);
medians over ``--repeats`` rounds. For uniform, the max abs difference between
ours and mergekit's result is reported (same rule, so ~float32 rounding); TIES
and DARE differ by design (tests/averaging/test_avg_mergekit_differences.py).

Weight matching: ``weight_matching`` between two independently initialised
MLPs 40 -> w -> w -> w -> 10 (three permutations), medians of ``--repeats``, in
this process (one torch thread).

    PYTHONPATH=$PWD/src python benchmarks/merge.py --mergekit-site /tmp/mkvenv/lib/python3.11/site-packages

Writes benchmarks/results/merge.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "merge.md"
LAYERS = (256, 512, 512, 512, 512, 256)  # Linear widths: 5 layers, 1,050,880 parameters
TIES_DENSITY = 0.2
DARE_DROP = 0.9
RULES = ("uniform", "ties", "dare")
TOOLS = ("ours", "mergekit", "mergekit-lazy", "stack-all")


# ---------------------------------------------------------------- checkpoints

def write_checkpoints(folder: Path, n: int) -> None:
    """base.pt and ft_<i>.pt: a random MLP and n 'fine-tunings' (base + small noise)."""
    import torch

    # plain torch.save under the final name: mergekit's --lazy-unpickle reader takes the archive's
    # internal folder from the file name up to its first dot, so it cannot read files written under a
    # temporary name and renamed (descentlab.checkpoints.save_atomic's "x.pt.tmp" stores "x.pt/...").
    save_atomic = torch.save
    g = torch.Generator().manual_seed(0)
    base = {}
    for i, (fan_in, fan_out) in enumerate(zip(LAYERS[:-1], LAYERS[1:])):
        base[f"{2 * i}.weight"] = torch.randn(fan_out, fan_in, generator=g) / fan_in ** 0.5
        base[f"{2 * i}.bias"] = torch.zeros(fan_out)
    save_atomic(base, folder / "base.pt")
    for i in range(n):
        save_atomic({k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}, folder / f"ft_{i}.pt")


def n_parameters() -> int:
    return sum(a * b + b for a, b in zip(LAYERS[:-1], LAYERS[1:]))


# ---------------------------------------------------------------- one measurement (worker process)

def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def merge_function(tool: str, rule: str):
    """f(base_path, paths) -> merged state dict."""
    import torch

    if tool == "ours":
        from descentlab.averaging import dare_merge, ties_merge, uniform_soup
        if rule == "uniform":
            return lambda base, paths: uniform_soup(paths)
        if rule == "ties":
            return lambda base, paths: ties_merge(base, paths, density=TIES_DENSITY)
        return lambda base, paths: dare_merge(base, paths, drop=DARE_DROP, seed=0)
    if tool == "stack-all":
        if rule != "uniform":
            raise ValueError("stack-all is the anchor for uniform only")

        def stack_all(base, paths):
            states = [torch.load(p, weights_only=True) for p in paths]
            return {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}
        return stack_all
    from mergekit.io.loader import TensorLoader
    from mergekit.merge_methods.base import TensorGroup
    from mergekit.merge_methods.registry import get

    lazy = tool == "mergekit-lazy"
    method = get({"uniform": "linear", "ties": "ties", "dare": "dare_linear"}[rule])
    params = ({"weight": 1.0} if rule == "uniform" else
              {"weight": 1.0, "density": TIES_DENSITY} if rule == "ties" else
              {"weight": 1.0, "density": 1.0 - DARE_DROP})

    def mergekit_merge(base, paths):
        files = list(paths) if rule == "uniform" else [base, *paths]
        loaders = [TensorLoader.get(str(p), use_lazy_unpickle=lazy) for p in files]
        out = {}
        for name in loaders[0].keys():
            group = TensorGroup.from_tensors([ld.get_tensor(name) for ld in loaders], name=name,
                                             base_index=None if rule == "uniform" else 0)
            out[name] = method([group], parameters=params)[0]
        return out
    return mergekit_merge


def worker(tool: str, rule: str, n: int, folder: Path, mergekit_site: str | None, save: str | None) -> dict:
    if tool.startswith("mergekit"):
        if not mergekit_site:
            raise SystemExit("mergekit workers need --mergekit-site")
        sys.path.append(mergekit_site)  # appended: the project's torch stays first
    import torch
    torch.set_num_threads(1)
    merge = merge_function(tool, rule)
    base, paths = folder / "base.pt", [folder / f"ft_{i}.pt" for i in range(n)]
    merge(base, paths[:2])  # warm-up: imports, first-call costs
    gc.collect()
    before = _status("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    result = merge(base, paths)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM") - before
    if save:
        torch.save(result, save)
    return {"seconds": seconds, "peak_bytes": peak}


# ---------------------------------------------------------------- driver

def run_worker(tool, rule, n, folder, mergekit_site, save=None) -> dict:
    cmd = [sys.executable, __file__, "--worker", tool, rule, str(n), str(folder)]
    if mergekit_site:
        cmd += ["--mergekit-site", mergekit_site]
    if save:
        cmd += ["--save", save]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} {rule} N={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mergekit_version(site: str | None) -> str | None:
    if not site or not (Path(site) / "mergekit").is_dir():
        return None
    from importlib import metadata
    for dist in metadata.distributions(path=[site]):
        if dist.metadata["Name"] == "mergekit":
            return dist.version
    return "unknown version"


def bench_merges(ns, repeats, mergekit_site, tools) -> list[dict]:
    import torch
    rows = []
    with tempfile.TemporaryDirectory(prefix="merge-bench-") as tmp:
        folder = Path(tmp)
        write_checkpoints(folder, max(ns))
        for rule in RULES:
            for n in ns:
                these = [t for t in tools if t != "stack-all" or rule == "uniform"]
                got = {t: [] for t in these}
                for r in range(repeats):
                    for t in these:  # round by round: every tool once per round
                        got[t].append(run_worker(t, rule, n, folder, mergekit_site))
                        print(f"{rule} N={n} {t} round {r}: {got[t][-1]}", file=sys.stderr, flush=True)
                row = {"rule": rule, "n": n}
                for t in these:
                    row[t] = (statistics.median(m["seconds"] for m in got[t]),
                              statistics.median(m["peak_bytes"] for m in got[t]))
                if rule == "uniform" and "mergekit" in these:
                    a, b = folder / "ours.pt", folder / "mk.pt"
                    run_worker("ours", rule, n, folder, mergekit_site, save=str(a))
                    run_worker("mergekit", rule, n, folder, mergekit_site, save=str(b))
                    sa, sb = torch.load(a), torch.load(b)
                    row["diff"] = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
                rows.append(row)
    return rows


def bench_weight_matching(widths, repeats) -> list[dict]:
    import torch
    from torch import nn

    from descentlab.averaging import sequential_spec, weight_matching
    torch.set_num_threads(1)
    rows = []
    for w in widths:
        def mlp(seed):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(40, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                                 nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 10))
        a, b = mlp(1), mlp(2)
        spec = sequential_spec(a)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            weight_matching(spec, a, b, seed=0)
            times.append(time.perf_counter() - t0)
        rows.append({"width": w, "params": sum(p.numel() for p in a.parameters()), "seconds": statistics.median(times),
                     "min": min(times), "max": max(times)})
        print(f"weight matching width {w}: {times}", file=sys.stderr, flush=True)
    return rows


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[:3].__str__().replace("'", "")


def mb(b: float) -> str:
    return f"{b / 2 ** 20:.1f}"


def write_table(merges, matching, args, load_start, load_end, mk_version) -> str:
    import torch
    tools = [t for t in TOOLS if any(t in r for r in merges)]
    lines = [
        "# Model merging: descentlab.averaging vs mergekit, and weight matching vs width", "",
        f"`PYTHONPATH=$PWD/src python benchmarks/merge.py --repeats {args.repeats}"
        + (" --mergekit-site <venv site-packages>" if args.mergekit_site else "") + "` "
        f"on {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} CPU, one torch thread per process, "
        f"a shared machine: load average (1, 5, 15 min) {load_start} at the start, {load_end} at the end "
        "(timings are noisy at this load).", "",
        f"Model: an MLP with Linear layers {' -> '.join(map(str, LAYERS))} ({n_parameters():,} float32 parameters, "
        "4.0 MiB per file); N fine-tuned checkpoints (base + 0.01 noise) and the base, raw `torch.save` state dicts "
        f"in one scratch folder read by every tool. TIES density {TIES_DENSITY}; DARE drop {DARE_DROP} "
        "(mergekit `dare_linear`, density 0.1), summed as task arithmetic.", "",
    ]
    if mk_version:
        lines += [f"mergekit {mk_version}, installed with `pip install --no-deps` (plus safetensors, accelerate, also "
                  "--no-deps) in a scratch venv, its merge methods (`linear`, `ties`, `dare_linear`) called tensor by "
                  "tensor on its own loaders. Its `run_merge` entry point needs `transformers` (not installed), so "
                  "its task-graph overhead is NOT included: the mergekit times are a lower bound on running mergekit. "
                  "`mergekit`: its default loader (every file `torch.load`ed and kept open); "
                  "`mergekit-lazy`: `--lazy-unpickle` (tensors read from the zip one by one). The checkpoints are written "
                  "with plain `torch.save`: mergekit's lazy reader takes the zip's inner folder from the file name up "
                  "to its first dot, so it cannot read files written under a temporary name and renamed, as "
                  "`descentlab.checkpoints.save_atomic` writes the project's checkpoints (KeyError "
                  "'There is no item named ft_0/data/0').", ""]
    else:
        lines += ["**mergekit could not run here** (not installed or `--mergekit-site` not given): only ours and the "
                  "plain in-memory anchor (`stack-all`: load all N, stack, mean) are compared.", ""]
    lines += ["Each cell: median wall seconds / median peak MiB (RSS above the RSS just before the merge, result "
              f"included; each measurement in a fresh process after a warm-up merge), {args.repeats} rounds, tools "
              "alternating round by round. `ours/mk`: our median time over mergekit's default loader's "
              "(> 1: we are slower). The peak of one merge varies by up to ~25 MiB between rounds (allocator reuse); "
              "one checkpoint file is 4.0 MiB, so memory that grows with N shows as ~4 MiB per input.", ""]
    header = "| rule | N | " + " | ".join(tools) + (" | ours/mk time | max abs diff ours vs mk |" if "mergekit" in tools else " |")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for r in merges:
        cells = [f"{r[t][0]:.3f} s / {mb(r[t][1])} MiB" if t in r else "-" for t in tools]
        line = f"| {r['rule']} | {r['n']} | " + " | ".join(cells)
        if "mergekit" in tools:
            diff = f"{r['diff']:.1e}" if "diff" in r else "differs by design"
            line += f" | {r['ours'][0] / r['mergekit'][0]:.2f} | {diff}"
        lines.append(line + " |")
    lines += ["", "Against the targets (computed from the table above):", ""]
    by = {(r["rule"], r["n"]): r for r in merges}
    ns = sorted({r["n"] for r in merges})
    for r in merges:
        if "mergekit" in r and r["ours"][0] > r["mergekit"][0]:
            lines.append(f"- SLOWER than mergekit: {r['rule']} N={r['n']}, {r['ours'][0]:.3f} s vs "
                         f"{r['mergekit'][0]:.3f} s ({r['ours'][0] / r['mergekit'][0]:.2f}x).")
    if "mergekit" in tools and not any(r["ours"][0] > r["mergekit"][0] for r in merges):
        lines.append("- Time: ours was not slower than mergekit (default loader) in any row.")
    if len(ns) > 1:
        lo, hi = ns[0], ns[-1]
        for rule in RULES:
            if (rule, lo) in by and (rule, hi) in by:
                growth = ", ".join(f"{t} {mb(by[(rule, lo)][t][1])} -> {mb(by[(rule, hi)][t][1])} MiB"
                                   for t in tools if t in by[(rule, lo)])
                lines.append(f"- {rule}: peak memory from N={lo} to N={hi}: {growth}.")
    lines += ["", "## Weight matching (Git Re-Basin) time vs width", "",
              f"`weight_matching` between two independently initialised MLPs 40 -> w -> w -> w -> 10 (3 permutations, "
              f"coordinate descent to convergence, seed 0), median of {args.repeats} (min, max) seconds, one thread.", "",
              "| width | parameters | median s | min s | max s |", "|---|---|---|---|---|"]
    for r in matching:
        lines.append(f"| {r['width']} | {r['params']:,} | {r['seconds']:.3f} | {r['min']:.3f} | {r['max']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ns", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--mergekit-site", default=None, help="site-packages of the scratch venv holding mergekit")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--worker", nargs=4, metavar=("TOOL", "RULE", "N", "FOLDER"), help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        tool, rule, n, folder = args.worker
        print(json.dumps(worker(tool, rule, int(n), Path(folder), args.mergekit_site, args.save)))
        return
    if args.repeats < 3:
        ap.error("--repeats: medians of at least 3")
    mk_version = mergekit_version(args.mergekit_site)
    tools = [t for t in TOOLS if mk_version or not t.startswith("mergekit")]
    load_start = loadavg()
    merges = bench_merges(args.ns, args.repeats, args.mergekit_site if mk_version else None, tools)
    matching = bench_weight_matching(args.widths, args.repeats)
    text = write_table(merges, matching, args, load_start, loadavg(), mk_version)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
