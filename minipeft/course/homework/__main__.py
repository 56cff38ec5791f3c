"""`python -m minipeft.course.homework --child`: the grading child (grader.child_main)."""
import sys

from minipeft.course.homework.grader import child_main

if __name__ == "__main__":
    if sys.argv[1:] != ["--child"]:
        sys.exit("this module is run by the grader as `--child`; use `python -m minipeft "
                 "homework build|grade`")
    child_main()
