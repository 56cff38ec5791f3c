"""Homework autograding on otter-grader: student notebooks, Gradescope zips, a safe local grader.

Each homework is an otter master notebook in notebooks/homework/ (otter's assign format:
an assignment config, then per question a prompt, a solution and tests). Every question
asks the student to write one function; its two tests are one line each and call
`check_exercise(homework, question, function, "public" | "hidden")`:

* public (1 point, shown to students): one small case;
* hidden (2 points): seeded random inputs of random shapes. A function that returns a
  constant or hard-codes the public case cannot pass it.

Both compare the student's function with minipeft's own computation (the `reference` of
each `Exercise`: a LoraLayer, `quantize_nf4`, `compute_fisher`, an IA3Layer ...).

`build` runs `otter assign` on every master notebook and writes
    DIR/<hw>/student/<hw>.ipynb                  the notebook students get (solutions out)
    DIR/<hw>/autograder/<hw>-autograder.zip      the zip Gradescope takes (with minipeft's
                                                 source, which the tests import)

`grade` runs every submission in its own child process and does not trust it; grader.py
explains why not simply `otter run`, and what the grader defends against.

The package, in reading order:
    exercise_bank.py   the questions: `Exercise`, minipeft's reference computations and the
                       seeded random cases of each homework
    checking.py        values as JSON, `compare`, and `check_exercise` (the notebook test)
    grader.py          the local grader: the child that runs a submission, the parent that
                       scores it (results.json, summary.csv)
    assign.py          `build`: otter assign and the Gradescope zip
    __main__.py        `python -m minipeft.course.homework --child`, how the grader starts
                       a child
"""
from __future__ import annotations

import argparse
from pathlib import Path

from minipeft.course.homework.assign import build
from minipeft.course.homework.checking import call_with, check_exercise, compare
from minipeft.course.homework.exercise_bank import Exercise, cases, exercises
from minipeft.course.homework.grader import OUTPUT_CAP, grade

__all__ = ["Exercise", "OUTPUT_CAP", "build", "call_with", "cases", "check_exercise",
           "compare", "exercises", "grade", "run_command"]


def run_command(args: argparse.Namespace) -> None:
    if args.homework_command == "build":
        for path in build(args.out, args.homework):
            print("wrote", path)
        return
    results = grade(args.homework, args.submissions, args.out, args.timeout, args.jobs)
    print(f"graded {len(results)} submission(s); summary in {Path(args.out) / 'summary.csv'}")

