"""`python -m minipeft reproduce`: run a study, check it, or list the studies."""
from __future__ import annotations

from minipeft.course.studies.catalog import PLANNED, STUDIES, get_study
from minipeft.course.studies.results import format_table, ranking, read_results
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
    print(f"{'study':18s} {'cells':>5s} {'seeds':>5s}  minutes (stored run, one thread/cell)")
    for study in STUDIES.values():
        minutes = estimated_minutes(study)
        stored = "not run yet" if minutes is None else (
            f"{minutes:.1f} with --jobs 1, ≈{minutes / 2:.1f} with --jobs 2 on 2 cores")
        print(f"{study.name:18s} {len(study.cells):5d} {study.seeds:5d}  {stored}")
    print("planned, not defined yet:", ", ".join(PLANNED))


def print_check(study: Study) -> None:
    mismatches = check_reproduces(study)
    if mismatches:
        raise RuntimeError(f"{study.name}: the check cell no longer reproduces the stored "
                           f"row: {'; '.join(mismatches)}. Re-run the study with --restart "
                           "if the change is intended")
    print(f"{study.name}: the check cell reproduces the stored row exactly")


def print_tables(study: Study, document: dict | None = None) -> None:
    document = document or read_results(results_path(study.name))
    cells, rows = list(study.cells), document["rows"]
    print(study.claim)
    for metric in (study.metric, "answer_loss"):
        print()
        print(format_table(rows, cells, metric, study.lecture_numbers))
    if len(document["seeds"]) < 2:
        return  # one seed has no spread to compare against
    print()
    print(f"ranking by {study.metric}, neighbours compared:")
    for line in ranking(rows, cells, study.metric):
        print("  " + line)
