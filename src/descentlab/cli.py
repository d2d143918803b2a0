"""Command line: ``descentlab train|check|list``.

  descentlab train --spec spec.json --out DIR    train one run (resumes if DIR has a resume point)
  descentlab check config/studies/*.yaml         validate study files without running anything
  descentlab list optimizers                     the names a registry accepts
  descentlab claims results/claims.csv [--readme README.md]   the claims table
  descentlab timings results [--readme README.md]             time per study of a workflow run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REGISTRY_KINDS = ("datasets", "models", "losses", "optimizers", "schedules", "instruments", "analyses", "figures")


def _cmd_train(args: argparse.Namespace) -> int:
    import torch
    import yaml

    from .data import SplitData, build_dataset
    from .jobs import resolve_device
    from .spec import SpecError, validate
    from .train import train_run

    try:
        with open(args.spec) as fh:
            spec = yaml.safe_load(fh)  # YAML is a superset of JSON
        spec = validate(spec, where=str(args.spec))
    except (OSError, SpecError) as err:
        print(f"descentlab train: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    data = SplitData.load(args.data) if args.data else build_dataset(spec["dataset"])
    result = train_run(spec, data, args.out, device=resolve_device(args.device), progress=None if args.progress == "auto" else args.progress == "on")
    print(json.dumps({"run_id": result.run_id, "status": result.status, "steps": result.steps_completed, "resumed_from": result.resumed_from, "out": str(result.out_dir)}))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .studies import SCALES, StudyError, expand_study, load_study

    failed = 0
    for path in args.studies:
        try:
            study = load_study(path)
        except StudyError as err:
            print(err, file=sys.stderr)
            failed += 1
            continue
        counts = ", ".join(f"{scale}: {len(expand_study(study, scale))} runs" for scale in SCALES)
        print(f"{path}: ok ({counts})")
    return 1 if failed else 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .analyses import ANALYSES
    from .plots import FIGURES
    from .spec import registries
    from .train.instruments import INSTRUMENTS

    plural = {"dataset": "datasets", "model": "models", "loss": "losses", "optimizer": "optimizers", "schedule": "schedules"}
    regs = {plural[k]: v for k, v in registries().items()}
    regs.update(instruments=INSTRUMENTS, analyses=ANALYSES, figures=FIGURES)
    print("\n".join(regs[args.kind].names()))
    return 0


def _publish(command: str, markdown: str, readme: Path | None, header: str, done: str) -> int:
    """Print ``markdown``, or write it with ``header`` into the README block ``command``."""
    from .readme_blocks import replace_block

    if readme is None:
        print(markdown)
        return 0
    try:
        readme.write_text(replace_block(readme.read_text(), command, header + "\n\n" + markdown))
    except (OSError, ValueError) as err:
        print(f"descentlab {command}: {readme}: {err}", file=sys.stderr)
        return 2
    print(f"{readme}: {command} table updated ({done})")
    return 0


def _cmd_claims(args: argparse.Namespace) -> int:
    import pandas as pd

    from .claims import markdown_table

    try:
        table = pd.read_csv(args.claims, keep_default_na=False)
    except (OSError, ValueError) as err:
        print(f"descentlab claims: cannot read {args.claims}: {err}", file=sys.stderr)
        return 2
    held = int((table["holds"] == "yes").sum())
    scales = ", ".join(sorted(set(table["scale"].astype(str)))) or "(none)"
    header = (f"{held} of {len(table)} claims hold at scale {scales} "
              f"(regenerate: `descentlab claims {args.claims} --readme {args.readme}`).")
    return _publish("claims", markdown_table(table), args.readme, header, f"{held} of {len(table)} hold")


def _cmd_timings(args: argparse.Namespace) -> int:
    from .timings import markdown_table, per_study, read_job_benchmarks

    try:
        table = per_study(read_job_benchmarks(args.results))
    except ValueError as err:
        print(f"descentlab timings: {args.results}: {err}", file=sys.stderr)
        return 2
    header = (f"Per study, from the job benchmark files of `{args.results}` "
              f"(regenerate: `descentlab timings {args.results} --readme {args.readme}`).")
    return _publish("timings", markdown_table(table), args.readme, header, f"{len(table)} rows")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="descentlab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one run from a spec file (JSON or YAML)")
    train.add_argument("--spec", required=True, type=Path, help="run spec file")
    train.add_argument("--out", required=True, type=Path, help="run directory (created; resumed if it holds a resume point)")
    train.add_argument("--data", type=Path, help="a prepared dataset .pt (default: build the spec's dataset)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    train.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    train.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="progress bar (auto: when stderr is a terminal)")
    train.set_defaults(func=_cmd_train)

    check = sub.add_parser("check", help="validate study files at every scale")
    check.add_argument("studies", nargs="+", type=Path)
    check.set_defaults(func=_cmd_check)

    claims = sub.add_parser("claims", help="print results/claims.csv as a Markdown table, or write it into the README")
    claims.add_argument("claims", type=Path, help="a claims.csv written by the workflow")
    claims.add_argument("--readme", type=Path, help="replace the table between the README's claims markers")
    claims.set_defaults(func=_cmd_claims)

    timings = sub.add_parser("timings", help="CPU and wall seconds per study of a workflow run (from its job benchmark files)")
    timings.add_argument("results", type=Path, help="the workflow's results folder")
    timings.add_argument("--readme", type=Path, help="replace the table between the README's timings markers")
    timings.set_defaults(func=_cmd_timings)

    lst = sub.add_parser("list", help="list the names a registry accepts")
    lst.add_argument("kind", choices=REGISTRY_KINDS)
    lst.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
