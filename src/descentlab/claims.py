"""Claims: a paper's claim, stated as a check over a figure's tables.

A study lists under each figure the claims the figure regenerates::

    claims:
      - id: sharpness-at-threshold
        text: "for every lr, late sharpness is within 15% of 2/lr"
        check: all_rows
        options: {holds_if: "abs(ratio_to_threshold - 1) <= 0.15", report: ratio_to_threshold}
        otherwise: "at this scale the run is too short for sharpness to reach 2/lr"

The figure job evaluates them on the figure's summary table (or on an
analysis table it reads, ``options.table``) and writes one row per claim:
study, figure, claim, text, scale, holds (yes/no), the numbers it rests on,
the seeds behind them, and the ``otherwise`` note when it does not hold. A
claim that does not hold is a result, not an error: the workflow finishes,
and the figure's caption strip and ``results/claims.csv`` say so.

Check kinds (``CLAIM_CHECKS``), each ``check(table, **options) -> Outcome``:

- ``all_rows``: every row (after ``where``) satisfies ``holds_if``;
- ``paired``: setting ``a`` beats setting ``b`` on ``column``, judged over
  pairs matched on ``pair_on`` (the seed): the two-sided ``confidence``
  t-interval of the mean paired difference must lie beyond ``margin``.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any, Sequence

from .registry import Registry
from .readme_blocks import replace_block

CLAIM_CHECKS = Registry("claim check")
CLAIM_COLUMNS = ["study", "figure", "claim", "text", "scale", "holds", "numbers", "seeds", "note"]


class ClaimError(ValueError):
    """A claim that cannot be evaluated as written (a missing column, a bad expression)."""


@dataclass
class Outcome:
    holds: bool
    numbers: str  # the numbers the verdict rests on, for a reader
    seeds: int | None = None  # seeds behind them (None: the table has no seed column)


def _select(table, where: str | None):
    if not where:
        return table
    try:
        return table.query(where, engine="python")
    except Exception as err:
        raise ClaimError(f"where {where!r}: {err}; columns: {list(table.columns)}") from None


def _eval(table, expression: str):
    try:
        return table.eval(expression, engine="python")
    except Exception as err:
        raise ClaimError(f"expression {expression!r}: {err}; columns: {list(table.columns)}") from None


def _seeds(table) -> int | None:
    return int(table["seed"].nunique()) if "seed" in table.columns else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@CLAIM_CHECKS.register("all_rows")
def all_rows(table, holds_if: str, where: str | None = None, report: str | None = None,
             label: Sequence[str] = (), min_rows: int = 1) -> Outcome:
    """Every row (of those ``where`` keeps) satisfies the expression ``holds_if``.

    ``report``: an expression whose value per row is shown, labelled by the
    ``label`` columns; rows that fail are marked with ``!``. Entries that read
    the same are shown once: a value computed from the mean over seeds is on
    every seed's row, and all those rows count for the seeds behind it."""
    rows = _select(table, where)
    if len(rows) < min_rows:
        return Outcome(False, f"{len(rows)} rows (need {min_rows})", _seeds(rows))
    ok = _eval(rows, holds_if).astype(bool)
    shown = _eval(rows, report) if report else ok
    label = list(label)
    parts = []
    for (i, row), value, good in zip(rows.iterrows(), shown, ok):
        name = ", ".join(f"{_fmt(row[c])}" for c in label)
        part = f"{name + ': ' if name else ''}{_fmt(value)}{'' if good else ' !'}"
        if part not in parts:
            parts.append(part)
    what = report or holds_if
    return Outcome(bool(ok.all()), f"{what}: " + "; ".join(parts), _seeds(rows))


def t_interval(differences: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided t confidence interval of the mean."""
    from scipy import stats

    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return mean, -math.inf, math.inf
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@CLAIM_CHECKS.register("paired")
def paired(table, column: str, by: str, a: Any, b: Any, greater: bool = True, margin: float = 0.0,
           pair_on: Sequence[str] = ("seed",), within: Sequence[str] = (), where: str | None = None,
           confidence: float = 0.95) -> Outcome:
    """``a`` beats ``b`` on ``column`` (larger if ``greater``, else smaller),
    judged on differences paired on ``pair_on``: the ``confidence`` t-interval
    of the mean difference (a - b, sign flipped when not ``greater``) lies
    above ``margin``. With ``within`` (columns), it must hold in every group."""
    rows = _select(table, where)
    missing = sorted({column, by, *pair_on, *within} - set(rows.columns))
    if missing:
        raise ClaimError(f"columns {missing} not in the table; columns: {list(rows.columns)}")
    sign = 1.0 if greater else -1.0
    groups = rows.groupby(list(within)) if within else [((), rows)]
    verdicts, parts, seeds = [], [], set()
    for key, group in groups:
        left = group[group[by].astype(str) == str(a)].set_index(list(pair_on))[column]
        right = group[group[by].astype(str) == str(b)].set_index(list(pair_on))[column]
        common = left.index.intersection(right.index)
        diffs = [sign * (float(left[k]) - float(right[k])) for k in common]
        seeds.update(map(str, common))
        name = ", ".join(map(_fmt, key if isinstance(key, tuple) else (key,)))
        if len(diffs) < 2:
            verdicts.append(False)
            parts.append(f"{name + ': ' if name else ''}{len(diffs)} pairs (need 2)")
            continue
        mean, low, high = t_interval(diffs, confidence)
        verdicts.append(low > margin)
        parts.append(f"{name + ': ' if name else ''}{'+' if greater else '-'}({a} - {b}) = {mean:.4g} "
                     f"[{low:.4g}, {high:.4g}], n={len(diffs)}")
    holds = bool(verdicts) and all(verdicts)
    return Outcome(holds, f"{column}, {int(confidence * 100)}% paired t-interval: " + "; ".join(parts), len(seeds) or None)


def evaluate_claims(claims: Sequence[dict[str, Any]], summary, tables: dict[str, Any], *, study: str,
                    figure: str, scale: str):
    """One row per claim (``CLAIM_COLUMNS``), evaluated on the figure's summary
    table or, with ``options.table``, on an analysis table it reads."""
    import pandas as pd

    rows = []
    for claim in claims:
        options = dict(claim.get("options", {}))
        source = options.pop("table", None)
        if source is None:
            table = summary
        elif source in tables:
            table = tables[source]
        else:
            raise ClaimError(f"{study}/{figure}: claim {claim['id']!r} reads table {source!r}; the figure reads {sorted(tables)}")
        try:
            outcome = CLAIM_CHECKS.get(claim["check"])(table, **options)
        except ClaimError as err:
            raise ClaimError(f"{study}/{figure}: claim {claim['id']!r}: {err}") from None
        rows.append({
            "study": study, "figure": figure, "claim": claim["id"], "text": claim["text"], "scale": scale,
            "holds": "yes" if outcome.holds else "no", "numbers": outcome.numbers, "seeds": outcome.seeds,
            "note": "" if outcome.holds else claim.get("otherwise", ""),
        })
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def _seed_count(value: Any) -> int | None:
    """A claims row's seed count, however the table was read (int, float, NaN, '')."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else int(number)


def caption_text(claims_table, width: int = 110) -> str:
    """The claims as the figure's caption strip: verdict, claim, and, when it
    does not hold, what the figure shows instead."""
    lines = []
    for row in claims_table.itertuples():
        verdict = "HOLDS" if row.holds == "yes" else "DOES NOT HOLD"
        n = _seed_count(row.seeds)
        seeds = "" if n is None else f" (n = {n} seeds)"
        body = f"{verdict}{seeds}: {row.text}."
        if row.holds != "yes" and row.note:
            body += f" {row.note}"
        lines += textwrap.wrap(body, width, subsequent_indent="    ")
    return "\n".join(lines)


def markdown_table(claims_table) -> str:
    """The claims as a Markdown table (for the README)."""
    lines = ["| study | figure | claim | holds | seeds | numbers |", "|---|---|---|---|---|---|"]
    for row in claims_table.itertuples():
        numbers = str(row.numbers).replace("|", "/")
        if len(numbers) > 160:
            numbers = numbers[:157] + "..."
        n = _seed_count(row.seeds)
        seeds = "" if n is None else n
        lines.append(f"| {row.study} | {row.figure} | {row.text} | {row.holds} | {seeds} | {numbers} |")
    return "\n".join(lines)


def update_readme(readme_text: str, table_markdown: str, header: str) -> str:
    """The README with the text between the claims markers replaced."""
    return replace_block(readme_text, "claims", header + "\n\n" + table_markdown)
