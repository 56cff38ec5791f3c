"""Run a study: every cell at every seed, each on one torch thread, stored after each cell.

Determinism. A cell's numbers depend on the seed and on how many threads torch splits its
sums over (floating-point addition is not associative), so every cell runs on exactly one
thread, set and restored around it (`one_thread`): a stored row then reproduces bit for bit
on any machine with the same torch. `jobs` > 1 runs cells in that many worker processes
(multiprocessing, spawn) for throughput; each worker is still one thread, so the numbers do
not depend on `jobs`.

Nothing finished is lost. The results file is rewritten (atomically) after every cell, and
a run continues from what the file already holds when the study's code version is the
same; a file from another version must be discarded on purpose (`restart=True`).

The code version is what decides whether stored rows still describe the code: torch's
version (its kernels change the last bits) and a hash of the study's own definition (its
settings, grid and the source of its run_cell). A hash of every library file would go stale
at every commit; a change to the library that moves a number is caught instead by the drift
test, which re-runs each study's check cell and compares it with the stored row.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import multiprocessing
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from minipeft.course.studies.results import (TIMING_METRICS, cell_label, read_results,
                                             write_results)
from minipeft.paths import DATA_DIR

RESULTS_DIR = DATA_DIR / "results"


@dataclass(frozen=True)
class Study:
    """A named grid of cells, each measured at several seeds by `run_cell`.

    run_cell(setup, seed) trains one model and returns {metric: value}; `setup` is the
    study's shared `settings` updated with the cell's own settings. `check_cell` is the
    cheapest cell, the one re-run to check that the stored table still matches the code.
    `lecture_numbers` maps a cell label (see `cell_label`) to the lecture's number for it.
    """

    name: str
    claim: str  # the lecture's claim this study checks, and where the lecture makes it
    settings: dict
    cells: tuple[dict, ...]
    run_cell: Callable[[dict, int], dict[str, float]]
    check_cell: dict
    metric: str  # the headline metric of the study's table
    seeds: int = 3
    lecture_numbers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        labels = [cell_label(cell) for cell in self.cells]
        if len(set(labels)) != len(labels):
            raise ValueError(f"study {self.name!r} lists a cell twice: {labels}")
        if cell_label(self.check_cell) not in labels:
            raise ValueError(f"study {self.name!r}: check_cell {self.check_cell} is not one "
                             "of its cells")
        unknown = set(self.lecture_numbers) - set(labels)
        if unknown:
            raise ValueError(f"study {self.name!r}: lecture numbers for cells it does not "
                             f"have: {sorted(unknown)}")
        if self.seeds < 1:
            raise ValueError(f"study {self.name!r}: seeds must be ≥ 1, got {self.seeds}")

    def setup(self, cell: dict) -> dict:
        return {**self.settings, **cell}

    def code_version(self) -> dict:
        definition = json.dumps({"settings": self.settings, "cells": list(self.cells)},
                                sort_keys=True) + inspect.getsource(self.run_cell)
        return {"torch": torch.__version__,
                "study_sha256": hashlib.sha256(definition.encode()).hexdigest()[:16]}


def results_path(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block, the caller's setting restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_cell(study: Study, cell: dict, seed: int) -> dict[str, float]:
    """One cell at one seed, on one thread, with its wall time as `cell_seconds`."""
    return measure(study.run_cell, study.setup(cell), seed)


def measure(run_cell: Callable[[dict, int], dict[str, float]], setup: dict,
            seed: int) -> dict[str, float]:
    with one_thread():
        start = time.perf_counter()
        metrics = run_cell(setup, seed)
        metrics["cell_seconds"] = time.perf_counter() - start
    return {name: float(value) for name, value in metrics.items()}


def _measure_in_worker(job: tuple) -> tuple[dict, int, dict[str, float]]:
    """Worker-process entry point. A job carries run_cell itself (a module-level function
    pickles by name), the cell's setup, the cell and the seed."""
    run_cell, setup, cell, seed = job
    return cell, seed, measure(run_cell, setup, seed)


# --------------------------------------------------------------------------------------
# Running a whole study
# --------------------------------------------------------------------------------------
def new_document(study: Study, seeds: list[int]) -> dict:
    return {"study": study.name, "claim": study.claim, "code_version": study.code_version(),
            "settings": study.settings, "grid": list(study.cells), "seeds": seeds,
            "threads": 1, "rows": []}


def starting_document(study: Study, seeds: list[int], path: Path, restart: bool) -> dict:
    """The stored rows to continue from (same code version), or a fresh document."""
    if restart or not path.exists():
        return new_document(study, seeds)
    stored = read_results(path)
    if stored["code_version"] != study.code_version() or stored["grid"] != list(study.cells):
        raise ValueError(f"{path} was measured with another version of study {study.name!r} "
                         f"(stored {stored['code_version']}, now {study.code_version()}); "
                         "pass --restart to discard it and measure again")
    stored["seeds"] = sorted(set(stored["seeds"]) | set(seeds))
    return stored


def finished(document: dict) -> set[tuple[str, int]]:
    return {(cell_label(row["cell"]), row["seed"]) for row in document["rows"]}


def run_study(study: Study, seeds: int | None = None, jobs: int = 1, restart: bool = False,
              progress: bool = True, path: Path | None = None) -> dict:
    """Measure every cell of `study` at seeds 0 … seeds−1 and store the table in `path`
    (default data/results/<study>.json); cells already stored are not run again."""
    seed_list = list(range(study.seeds if seeds is None else seeds))
    if not seed_list or jobs < 1:
        raise ValueError(f"need at least one seed and one job, got seeds={seeds}, jobs={jobs}")
    path = results_path(study.name) if path is None else Path(path)
    document = starting_document(study, seed_list, path, restart)
    done = finished(document)
    todo = [(cell, seed) for seed in seed_list for cell in study.cells
            if (cell_label(cell), seed) not in done]
    write_results(path, document)
    bar = tqdm(total=len(todo), desc=study.name, disable=not progress, unit="cell")
    for cell, seed, metrics in measured(study, todo, jobs):
        document["rows"] += [{"cell": cell, "seed": seed, "metric": name, "value": value}
                             for name, value in metrics.items()]
        write_results(path, document)  # after every cell: a killed run keeps what it did
        bar.update()
    bar.close()
    return document


def measured(study: Study, todo: list[tuple[dict, int]],
             jobs: int) -> Iterator[tuple[dict, int, dict[str, float]]]:
    """(cell, seed, metrics) as each cell finishes, here or in `jobs` worker processes
    (spawned, so no worker inherits the parent's torch state)."""
    if jobs == 1:
        for cell, seed in todo:
            yield cell, seed, measure_cell(study, cell, seed)
        return
    jobs_for_workers = [(study.run_cell, study.setup(cell), cell, seed) for cell, seed in todo]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        yield from pool.imap_unordered(_measure_in_worker, jobs_for_workers)


def check_reproduces(study: Study, seed: int = 0, path: Path | None = None) -> list[str]:
    """Re-run the study's check cell at `seed`; the stored metrics it does not match exactly
    (timings excepted). An empty list: the stored table still describes the code."""
    path = results_path(study.name) if path is None else Path(path)
    stored = {row["metric"]: row["value"] for row in read_results(path)["rows"]
              if cell_label(row["cell"]) == cell_label(study.check_cell) and row["seed"] == seed}
    if not stored:
        raise ValueError(f"{path} has no row for the check cell "
                         f"{cell_label(study.check_cell)!r} at seed {seed}; run the study")
    now = measure_cell(study, study.check_cell, seed)
    return [f"{metric}: stored {stored.get(metric)!r}, now {now.get(metric)!r}"
            for metric in sorted(set(stored) | set(now)) if metric not in TIMING_METRICS
            and stored.get(metric) != now.get(metric)]


def estimated_minutes(study: Study, path: Path | None = None) -> float | None:
    """Minutes the stored run took on one thread per cell (None if never run)."""
    path = results_path(study.name) if path is None else Path(path)
    if not path.exists():
        return None
    rows = read_results(path)["rows"]
    return sum(row["value"] for row in rows if row["metric"] == "cell_seconds") / 60


__all__ = ["Study", "RESULTS_DIR", "results_path", "one_thread", "measure_cell", "run_study",
           "check_reproduces", "estimated_minutes"]
