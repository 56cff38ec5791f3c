"""A study's stored table: the file format, its strict reader, and the seed-spread summaries.

    data/results/<study>.json
    {"study": name, "claim": ..., "code_version": {...}, "settings": {...}, "grid": [cell, ...],
     "seeds": [0, 1, 2], "threads": 1,
     "rows": [{"cell": {...}, "seed": int, "metric": str, "value": float}, ...]}

One row per cell, seed and metric; a cell holds the settings the study varies, by name
(e.g. {"r": 8, "targets": ["q", "v"]}), and `settings` the ones every cell shares. Timing
rows (TIMING_METRICS) are stored for the record but never compared: they depend on the
machine and its load.

A ranking is only worth teaching if it survives a change of seed, so every comparison here
looks at the spread over seeds: `summarize` gives mean, standard deviation (n − 1 in the
denominator) and min–max per cell and metric, and `differs` calls two cells different only
when their seed ranges do not overlap (explained at `differs`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from minipeft.checks import is_finite_number
from minipeft.files import atomic_write_text, read_json_object

TIMING_METRICS = ("step_seconds", "cell_seconds")
DOCUMENT_KEYS = {"study": str, "claim": str, "code_version": dict, "settings": dict,
                 "grid": list, "seeds": list, "threads": int, "rows": list}
ROW_KEYS = {"cell", "seed", "metric", "value"}


def cell_label(cell: dict) -> str:
    """A cell as one short string, e.g. {"r": 8, "targets": ["q", "v"]} → 'r=8 targets=q,v'."""
    return " ".join(f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}"
                    for key, value in cell.items())


# --------------------------------------------------------------------------------------
# Writing and reading the file
# --------------------------------------------------------------------------------------
def sorted_rows(document: dict) -> list[dict]:
    """Rows in grid order, then seed, then metric name: a re-run changes only what changed."""
    position = {cell_label(cell): i for i, cell in enumerate(document["grid"])}
    return sorted(document["rows"], key=lambda row: (position[cell_label(row["cell"])],
                                                     row["seed"], row["metric"]))


def write_results(path: str | Path, document: dict) -> Path:
    """Check the document, then write it atomically (a kill leaves the old file whole)."""
    check_document(document, Path(path))
    return atomic_write_text(path, to_json(document))


def to_json(document: dict) -> str:
    """The document as JSON with one cell and one row per line, so a re-run's diff shows
    exactly what moved."""
    head = json.dumps({k: v for k, v in document.items() if k not in ("grid", "rows")},
                      indent=1)
    grid = ",\n  ".join(json.dumps(cell) for cell in document["grid"])
    rows = ",\n  ".join(json.dumps(row) for row in sorted_rows(document))
    return (head[:-len("\n}")] + ',\n "grid": [\n  ' + grid + '\n ],\n "rows": [\n  '
            + rows + "\n ]\n}\n")


def read_results(path: str | Path) -> dict:
    """The stored study in `path`, or one ValueError naming the file, the problem and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `python -m minipeft reproduce "
                                f"{path.stem}` to measure it")
    fix = (f"rewrite it with `python -m minipeft reproduce {path.stem} --restart` (or restore "
           "it with git)")
    document = read_json_object(path, fix)
    check_document(document, path, fix)
    return document


def check_document(document: dict, path: Path, fix: str = "this is a bug in the runner") -> None:
    """Every key present with its type, every row well formed and inside the grid."""
    def fail(problem: str):
        raise ValueError(f"{path}: {problem}; {fix}")

    missing = sorted(set(DOCUMENT_KEYS) - set(document))
    extra = sorted(set(document) - set(DOCUMENT_KEYS))
    if missing or extra:
        fail(f"keys missing {missing} or unknown {extra}")
    for key, kind in DOCUMENT_KEYS.items():
        if not isinstance(document[key], kind) or isinstance(document[key], bool):
            fail(f"{key!r} should be a JSON {kind.__name__}, not {type(document[key]).__name__}")
    if not all(isinstance(cell, dict) and cell for cell in document["grid"]):
        fail("every cell of 'grid' should be a non-empty object of settings")
    labels = {cell_label(cell) for cell in document["grid"]}
    if len(labels) != len(document["grid"]):
        fail("'grid' names the same cell twice")
    seen = set()
    for i, row in enumerate(document["rows"]):
        if not isinstance(row, dict) or set(row) != ROW_KEYS:
            fail(f"row {i} should have exactly the keys {sorted(ROW_KEYS)}")
        if not isinstance(row["cell"], dict) or cell_label(row["cell"]) not in labels:
            fail(f"row {i}'s cell {row['cell']!r} is not in the grid")
        if not isinstance(row["seed"], int) or isinstance(row["seed"], bool):
            fail(f"row {i}'s seed should be an integer, not {row['seed']!r}")
        if not isinstance(row["metric"], str) or not is_finite_number(row["value"]):
            fail(f"row {i} should name a metric and hold a finite number, not "
                 f"{row['metric']!r} = {row['value']!r}")
        key = (cell_label(row["cell"]), row["seed"], row["metric"])
        if key in seen:
            fail(f"row {i} repeats cell {key[0]!r}, seed {key[1]}, metric {key[2]!r}")
        seen.add(key)


# --------------------------------------------------------------------------------------
# Summaries over seeds
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample standard deviation (n − 1); NaN for a single seed
    min: float
    max: float
    n: int


def summarize_values(values: list[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarize")
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return Summary(mean, std, min(values), max(values), n)


def values_of(rows: list[dict], cell: dict, metric: str) -> list[float]:
    """The metric's value at every seed of one cell (seed order)."""
    label = cell_label(cell)
    found = sorted((row["seed"], row["value"]) for row in rows
                   if row["metric"] == metric and cell_label(row["cell"]) == label)
    if not found:
        raise ValueError(f"no rows for cell {label!r} and metric {metric!r}")
    return [value for _, value in found]


def summarize(rows: list[dict], cell: dict, metric: str) -> Summary:
    return summarize_values(values_of(rows, cell, metric))


def seed_bars(rows: list[dict], cells: list[dict],
              metric: str) -> tuple[list[float], list[list[float]]]:
    """Each cell's mean and its bar down to the seed minimum and up to the maximum, in the
    shape matplotlib's errorbar takes: (means, [below, above]). The bars show the same
    min–max ranges that `differs` compares."""
    summaries = [summarize(rows, cell, metric) for cell in cells]
    return ([s.mean for s in summaries],
            [[s.mean - s.min for s in summaries], [s.max - s.mean for s in summaries]])


@dataclass(frozen=True)
class Comparison:
    beyond_noise: bool
    higher: str | None  # the label of the cell whose values are all higher, if beyond noise
    text: str


def differs(rows: list[dict], cell_a: dict, cell_b: dict, metric: str) -> Comparison:
    """Whether two cells differ beyond the seed spread: their min–max ranges do not overlap.

    With n seeds each, non-overlapping ranges happen by chance with probability
    2 / C(2n, n) when the two cells are really the same (every ordering of the 2n values is
    then equally likely, and only the two fully separated ones count): 0.10 for 3 seeds,
    0.008 for 5. A stricter test (Welch's t) needs scipy, which the course does not install.
    """
    a, b = summarize(rows, cell_a, metric), summarize(rows, cell_b, metric)
    if min(a.n, b.n) < 2:
        raise ValueError(f"comparing {metric} needs at least 2 seeds per cell, got {a.n} and "
                         f"{b.n}; run the study with --seeds 3 or more")
    if b.min > a.max:  # name the higher cell first
        (cell_a, a), (cell_b, b) = (cell_b, b), (cell_a, a)
    label_a, label_b = cell_label(cell_a), cell_label(cell_b)
    spread = (f"{a.min:.4g}–{a.max:.4g} vs {b.min:.4g}–{b.max:.4g} over {a.n} and {b.n} "
              "seeds")
    if a.min > b.max:
        return Comparison(True, label_a, f"{metric}: {label_a} > {label_b} beyond the seed "
                                         f"spread ({spread})")
    return Comparison(False, None, f"{metric}: {label_a} vs {label_b} within noise ({spread})")


def ranking(rows: list[dict], cells: list[dict], metric: str) -> list[str]:
    """Cells from the highest mean to the lowest, each neighbour pair with its verdict."""
    ordered = sorted(cells, key=lambda cell: -summarize(rows, cell, metric).mean)
    return [differs(rows, first, second, metric).text
            for first, second in zip(ordered, ordered[1:])]


def format_table(rows: list[dict], cells: list[dict], metric: str,
                 lecture_numbers: dict[str, str] | None = None) -> str:
    """A text table: cell, n, mean ± std, min–max and, beside ours, the lecture's number."""
    lecture_numbers = lecture_numbers or {}
    lines = [f"{'cell':34s} {'n':>2s}  {metric + ' mean ± std':>24s}  {'min–max':>17s}  lecture"]
    for cell in cells:
        s = summarize(rows, cell, metric)
        label = cell_label(cell)
        lines.append(f"{label:34s} {s.n:2d}  {s.mean:>14.4g} ± {s.std:<7.2g}  "
                     f"{s.min:>8.4g}–{s.max:<8.4g}  {lecture_numbers.get(label, '')}".rstrip())
    return "\n".join(lines)


__all__ = ["TIMING_METRICS", "cell_label", "write_results", "read_results", "check_document",
           "Summary", "summarize_values", "values_of", "summarize", "seed_bars", "Comparison",
           "differs", "ranking", "format_table"]
