"""Argument checks shared by the library and the command line: one wording for each rule.

Every count (steps, batch size, rank, ...) is a positive int, every rate or scale a finite
number, every choice one of a listed set. A bool is not accepted where an int or a number is
meant (Python treats True as 1, which would hide a mistyped config), and a string is never
read as a number.
"""
from __future__ import annotations

import math
from typing import Any, Iterable


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def check_positive_int(value: Any, name: str) -> int:
    """`value` if it is an int ≥ 1, else one ValueError naming `name`."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_non_negative_int(value: Any, name: str) -> int:
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be an integer ≥ 0, got {value!r}")
    return value


def check_finite(value: Any, name: str) -> float:
    """`value` if it is a finite number (not a bool, not a string)."""
    if not is_finite_number(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def check_positive(value: Any, name: str) -> float:
    """`value` if it is a finite number > 0."""
    check_finite(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


def check_non_negative(value: Any, name: str) -> float:
    check_finite(value, name)
    if value < 0:
        raise ValueError(f"{name} must be ≥ 0, got {value!r}")
    return value


def check_fraction(value: Any, name: str, *, include_zero: bool = True,
                   include_one: bool = False) -> float:
    """`value` in [0, 1) by default; the flags open or close either end."""
    check_finite(value, name)
    low_ok = value >= 0 if include_zero else value > 0
    high_ok = value <= 1 if include_one else value < 1
    if not (low_ok and high_ok):
        interval = ("[" if include_zero else "(") + "0, 1" + ("]" if include_one else ")")
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


def check_choice(value: Any, choices: Iterable, name: str) -> Any:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {choices}")
    return value
