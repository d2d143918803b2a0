"""Parse time: how long the workflow takes before it can run (or skip) any job.

Times three commands, each in a fresh Python process (median of ``--repeats``,
peak RSS of the process beside it):

  * import: ``import descentlab.plots, descentlab.analyses`` (what the study
    checks import to read figure/analysis signatures);
  * plan: ``plan(study_paths('config/studies', 'all'), 'cpu')`` (from
    ``descentlab.plan``, or ``descentlab.studies`` before it moved), the
    parse-time planning of the default configuration;
  * dry run: ``snakemake -n --quiet --config results=<tmpdir>`` on the
    repository's config (a fresh results folder, so it lists every job);
  * no-op (with ``--finished DIR``, this tree only): ``snakemake -n`` on a
    finished default run in DIR (``snakemake --cores all --config
    results=DIR`` made it): the invocation that finds nothing to do.

A separate ``python -X importtime`` run of the import command gives each
registry package's cumulative import time (torch, which the analyses and
every run spec need, is counted where it is first imported).

With ``--baseline REV`` the same commands also run on ``git archive REV``
(exported to a temporary folder), interleaved with the working tree's so both
see the same machine load:

    python benchmarks/parse_time.py --baseline main --repeats 5

Writes benchmarks/results/parse_time.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "parse_time.md"

IMPORT = "import descentlab.plots, descentlab.analyses"
PACKAGES = ("descentlab.plots", "descentlab.analyses")
# plan() moved from descentlab.studies to descentlab.plan; either tree can be timed.
PLAN = (
    "try:\n    from descentlab.plan import plan\nexcept ImportError:\n    from descentlab.studies import plan\n"
    "from descentlab.studies import study_paths\nplan(study_paths('config/studies', 'all'), 'cpu')"
)


def commands(results: str) -> dict[str, list[str]]:
    return {
        "import plots + analyses": [sys.executable, "-c", IMPORT],
        "plan(all studies, cpu)": [sys.executable, "-c", PLAN],
        "snakemake -n --quiet": ["snakemake", "-n", "--quiet", "--config", f"results={results}"],
    }


def timed(cmd: list[str], tree: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of ``cmd`` run in ``tree`` with its src first on the path."""
    env = dict(os.environ, PYTHONPATH=f"{tree / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {tree} (exit {proc.returncode}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def import_times(tree: Path) -> dict[str, float]:
    """Cumulative seconds of ``descentlab.plots`` and ``descentlab.analyses`` from ``-X importtime``."""
    env = dict(os.environ, PYTHONPATH=f"{tree / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", IMPORT], cwd=tree, env=env,
                         capture_output=True, text=True, check=True).stderr
    out = {}
    for line in err.splitlines():
        fields = [f.strip() for f in line.removeprefix("import time:").split("|")]
        if len(fields) == 3 and fields[2] in PACKAGES:
            out[fields[2]] = int(fields[1]) / 1e6
    return out


def export(rev: str, into: Path) -> Path:
    """``git archive rev`` unpacked into ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", help="a git revision to compare against (e.g. main)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--finished", type=Path, help="results folder of a finished default run, for the no-op time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {"this tree": REPO}
        if args.baseline:
            rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline],
                                 check=True, capture_output=True, text=True).stdout.strip()
            (tmp / "baseline").mkdir()
            trees = {f"baseline {args.baseline} ({rev})": export(args.baseline, tmp / "baseline"), **trees}
        cmds = commands(str(tmp / "results"))
        if args.finished:
            cmds["no-op on a finished run"] = ["snakemake", "-n", "--config", f"results={args.finished.resolve()}"]
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {(t, c): [] for t in trees for c in cmds}
        imports: dict[tuple[str, str], list[float]] = {(t, p): [] for t in trees for p in PACKAGES}
        for _ in range(args.repeats):  # interleaved: every command on every tree per round
            for name, cmd in cmds.items():
                for label, tree in trees.items():
                    if name == "no-op on a finished run" and tree != REPO:
                        continue  # the finished run is this tree's: another tree's code would retrain it
                    samples[label, name].append(timed(cmd, tree))
            for label, tree in trees.items():
                for package, seconds in import_times(tree).items():
                    imports[label, package].append(seconds)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Parse time",
        "",
        f"Median of {args.repeats} fresh processes each (interleaved), wall seconds and peak RSS; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other work, "
        f"Python {platform.python_version()}, HEAD {head}.",
        f"Command: `python benchmarks/parse_time.py{' --baseline ' + args.baseline if args.baseline else ''}"
        f"{' --finished RESULTS' if args.finished else ''} --repeats {args.repeats}`.",
        "The dry run writes to a fresh results folder, so it plans and lists every job of the default config.",
        "",
        "| command | tree | median s | min s | max s | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name in cmds:
        for label in trees:
            if not samples[label, name]:
                continue
            walls = [w for w, _ in samples[label, name]]
            rss = statistics.median(m for _, m in samples[label, name])
            lines.append(f"| {name} | {label} | {statistics.median(walls):.2f} | {min(walls):.2f} | {max(walls):.2f} | {rss:.0f} |")
    lines += [
        "",
        "`python -X importtime -c \"" + IMPORT + "\"`, cumulative import time (median s):",
        "",
        "| package | " + " | ".join(trees) + " |",
        "|---|" + "---|" * len(trees),
    ]
    for package in PACKAGES:
        lines.append(f"| {package} | " + " | ".join(f"{statistics.median(imports[t, package]):.2f}" for t in trees) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
