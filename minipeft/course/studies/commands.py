"""`python -m minipeft reproduce`: run a study, check it, or list the studies."""
from __future__ import annotations

from minipeft.course.studies.catalog import STUDIES, get_study
from minipeft.course.studies.results import (TIMING_METRICS, format_table, ranking,
                                             read_results)
from minipeft.course.studies.runner import (Study, check_reproduces, estimated_minutes,
                                            results_path, run_study)


def run_command(args) -> None:
    if args.list:
        if args.study or args.quick or args.restart or args.seeds or args.jobs != 1:
            raise ValueError("--list takes no study and no other option")
        print_list()
        return
    if not args.study:
        raise ValueError("name a study (python -m minipeft reproduce --list shows them)")
    study = get_study(args.study)
    if args.quick:
        if args.restart or args.seeds or args.jobs != 1:
            raise ValueError("--quick re-runs one stored cell; it takes no --seeds, --jobs "
                             "or --restart")
        print_check(study)
        return
    document = run_study(study, seeds=args.seeds, jobs=args.jobs, restart=args.restart,
                         progress=not args.quiet)
    print(f"wrote {results_path(study.name)}")
    print_tables(study, document)


def print_list() -> None:
    width = max(len(name) for name in STUDIES)
    print(f"{'study':{width}s} {'cells':>5s} {'seeds':>5s}  minutes (stored run, one thread/cell)")
    for study in STUDIES.values():
        minutes = estimated_minutes(study)
        stored = "not run yet" if minutes is None else (
            f"{minutes:.1f} with --jobs 1, ≈{minutes / 2:.1f} with --jobs 2 on 2 cores"
            + partial_note(study))
        print(f"{study.name:{width}s} {len(study.cells):5d} {study.seeds:5d}  {stored}")


def partial_note(study: Study) -> str:
    """' (so far: 12 of 81 cell runs)' for a stored table that is not complete."""
    done = {(str(row["cell"]), row["seed"]) for row in
            read_results(results_path(study.name))["rows"]}
    wanted = len(study.cells) * study.seeds
    return "" if len(done) >= wanted else f" (so far: {len(done)} of {wanted} cell runs)"


def print_check(study: Study) -> None:
    mismatches = check_reproduces(study)
    if mismatches:
        raise RuntimeError(f"{study.name}: the check cell no longer reproduces the stored "
                           f"row: {'; '.join(mismatches)}. Re-run the study with --restart "
                           "if the change is intended")
    print(f"{study.name}: the check cell reproduces the stored row exactly")


def print_tables(study: Study, document: dict | None = None) -> None:
    document = document or read_results(results_path(study.name))
    rows = document["rows"]
    print(study.claim)
    measured = {row["metric"] for row in rows}
    metrics = sorted(measured - {"answer_loss", *TIMING_METRICS})
    for metric in (*metrics, *({"answer_loss"} & measured)):  # answer loss last, if any
        cells = [cell for cell in study.cells if any(
            row["metric"] == metric and row["cell"] == cell for row in rows)]
        print()
        lecture = study.lecture_numbers if metric == study.metric else None
        print(format_table(rows, cells, metric, lecture))
        if len(document["seeds"]) > 1 and metric == study.metric:
            print(f"\nranking by {metric}, neighbours compared:")
            print("\n".join("  " + line for line in ranking(rows, cells, metric)))
