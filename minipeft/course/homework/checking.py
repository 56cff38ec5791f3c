"""Checking a student's function against minipeft's reference.

Values cross between processes as JSON (`to_json`, `from_json`: tensors, tuples, tiny
models); `compare` says in one sentence where and how a result differs from the expected one.

`check_exercise` is the notebook test (`grader.check` in a student's notebook, and on
Gradescope, where otter runs the tests in the student's kernel). It computes the reference
from a private, freshly imported copy of minipeft, so replacing
`minipeft.methods.qlora.nf4_levels_from_quantiles` (say) in the notebook does not change
it; the strict guarantee is the local grader's (grader.py).
"""
from __future__ import annotations

import contextlib
import importlib
import math
import sys
from typing import Any, Callable

import torch

from minipeft.course.homework.exercise_bank import TinyGPT


def to_json(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {"__tensor__": str(value.dtype).removeprefix("torch."), "shape": list(value.shape),
                "data": value.detach().cpu().reshape(-1).tolist()}
    if isinstance(value, TinyGPT):
        return {"__gpt__": value.config, "seed": value.seed}
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v) for v in value]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("dictionary keys must be strings")
        return {"__dict__": {k: to_json(v) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot compare a value of type {type(value).__name__}")


def from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        dtype = getattr(torch, value["__tensor__"])
        return torch.tensor(value["data"], dtype=dtype).reshape(value["shape"])
    if "__gpt__" in value:
        return TinyGPT(value["__gpt__"], value["seed"])
    if "__tuple__" in value:
        return tuple(from_json(v) for v in value["__tuple__"])
    return {k: from_json(v) for k, v in value["__dict__"].items()}


def as_scalar(value: Any) -> float | None:
    """A Python number or a one-element tensor as a float; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() <= 1:
        return float(value)
    return None


def compare(expected: Any, got: Any, rtol: float, atol: float, where: str = "result") -> str:
    """'' if `got` matches `expected`, else one sentence saying where and how it differs.

    Tensors must match in shape and dtype, then in value (floating point within rtol/atol,
    integers and booleans exactly). A number may come as a Python number or a 0-dim tensor.
    """
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            return f"{where}: expected a dict with keys {sorted(expected)}, got {describe(got)}"
        problems = (compare(expected[k], got[k], rtol, atol, f"{where}[{k!r}]") for k in expected)
        return next((p for p in problems if p), "")
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"{where}: expected a tuple of {len(expected)} values, got {describe(got)}"
        problems = (compare(e, g, rtol, atol, f"{where}[{i}]")
                    for i, (e, g) in enumerate(zip(expected, got)))
        return next((p for p in problems if p), "")
    if isinstance(expected, torch.Tensor) and expected.dim() > 0:
        return compare_tensors(expected, got, rtol, atol, where)
    value = as_scalar(got)
    if value is None:
        return f"{where}: expected the number {as_scalar(expected):.6g}, got {describe(got)}"
    if isinstance(expected, int):
        return "" if value == expected else f"{where}: expected {expected}, got {value:g}"
    if not math.isclose(value, as_scalar(expected), rel_tol=rtol, abs_tol=atol):
        return f"{where}: expected {as_scalar(expected):.6g}, got {value:.6g}"
    return ""


def compare_tensors(expected: torch.Tensor, got: Any, rtol: float, atol: float,
                    where: str) -> str:
    if not isinstance(got, torch.Tensor):
        return f"{where}: expected a tensor, got {describe(got)}"
    if got.shape != expected.shape:
        return f"{where}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if got.dtype != expected.dtype:
        return f"{where}: expected dtype {expected.dtype}, got {got.dtype}"
    if expected.is_floating_point():
        close = torch.allclose(got.double(), expected.double(), rtol=rtol, atol=atol)
    else:
        close = torch.equal(got, expected)
    if not close:
        diff = (got.double() - expected.double()).abs().max()
        return f"{where}: values differ (largest difference {float(diff):.3g})"
    return ""


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} values"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    return f"{type(value).__name__} {value!r}"[:200]


def call_with(function: Callable, arguments: tuple) -> Any:
    """Call `function` on a private copy of the arguments (it may change them in place)."""
    args = from_json(to_json(arguments))
    args = [a.build() if isinstance(a, TinyGPT) else a for a in args]
    return function(*args)


@contextlib.contextmanager
def fresh_homework_module():
    """A private copy of this package and of minipeft, imported afresh from the source files.

    While the block runs, sys.modules holds fresh copies of every minipeft module (so the
    references' imports find them, not the ones the notebook may have changed); afterwards
    the notebook's own modules are put back.
    """
    def ours(name: str) -> bool:
        return name == "minipeft" or name.startswith("minipeft.")

    saved = {n: m for n, m in sys.modules.items() if ours(n)}
    for name in saved:
        del sys.modules[name]
    try:
        yield importlib.import_module("minipeft.course.homework")
    finally:
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


def check_exercise(homework: str, question: str, function: Callable, which: str) -> None:
    """The notebook test: raise AssertionError unless `function` agrees with minipeft.

    which: "public" (the one small case) or "hidden" (seeded random cases).
    """
    with fresh_homework_module() as fresh:
        exercise = fresh.exercises(homework)[question]
        all_cases = fresh.cases(homework, exercise)
        chosen = all_cases[:1] if which == "public" else all_cases[1:]
        for n, arguments in enumerate(chosen):
            expected = fresh.call_with(exercise.reference, arguments)
            got = fresh.call_with(function, arguments)
            problem = fresh.compare(expected, got, exercise.rtol, exercise.atol)
            assert not problem, f"{which} case {n + 1} of {exercise.function}: {problem}"

