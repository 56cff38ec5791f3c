"""The arrows point down: the core never imports the GPT-2/peft interop or the course tooling.

The core is what the course teaches (the model, the training loop, the toy world, every
method). `minipeft.gpt2` (GPT-2 weights, BPE, peft-format files) imports the core, and
`minipeft.course` (homework grader, slides, benchmark) is imported only by the command line
when its command runs. An import in the other direction, even one hidden inside a function,
would make the core depend on transformers-shaped code, so these tests read every import
statement of every core module, and check what importing the package actually loads.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import minipeft

PACKAGE_DIR = Path(minipeft.__file__).resolve().parent
CORE_MODULES = ["model", "train", "tokenizer", "corpus", "tasks", "pretrained", "analysis",
                "prompt_analysis",
                "checks", "files", "paths", "icl"]
CORE_FILES = ([PACKAGE_DIR / f"{name}.py" for name in CORE_MODULES]
              + sorted((PACKAGE_DIR / "methods").glob("*.py")))
# The interop and the course tooling, under every name they have had (minipeft.bench and
# minipeft.slides lived beside the core before the course package held them).
OUTSIDE_THE_CORE = ("minipeft.gpt2", "minipeft.interop", "minipeft.course", "minipeft.bench",
                    "minipeft.slides")


def is_outside_the_core(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in OUTSIDE_THE_CORE)


def module_name(path: Path) -> str:
    """minipeft/methods/lora.py → minipeft.methods.lora (__init__.py → its package)."""
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth: module level,
    inside functions and classes, and importlib.import_module("...") with a literal name."""
    package = module_name(path) if path.name == "__init__.py" else \
        module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..gpt2 import y
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            # `from minipeft import gpt2` names the module in the alias, not in `module`
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__")):
            found.append((node.lineno, node.args[0].value))
    return found


def test_the_core_list_names_real_files():
    missing = [str(path) for path in CORE_FILES if not path.is_file()]
    assert not missing, f"core modules listed here no longer exist: {missing}"
    assert len(CORE_FILES) > len(CORE_MODULES)  # methods/ was found


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: module_name(p))
def test_core_module_imports_neither_interop_nor_course(path):
    offending = [f"{path.name}:{line} imports {module}"
                 for line, module in imported_modules(path) if is_outside_the_core(module)]
    assert not offending, ("the core must not import the GPT-2/peft interop or the course "
                           "tooling (they import the core): " + "; ".join(offending))


@pytest.mark.parametrize("source, expected", [
    ("import minipeft.gpt2\n", True),
    ("def f():\n    from minipeft.gpt2 import load_peft_adapter\n", True),
    ("from minipeft import course\n", True),
    ("from ..course.bench import main\n", True),  # relative, from inside minipeft/methods/
    ("import importlib\nimportlib.import_module('minipeft.gpt2')\n", True),
    ("from minipeft.model import GPT\nfrom .base import PeftModel\n", False),
])
def test_the_import_reader_sees_every_form(tmp_path, monkeypatch, source, expected):
    """The checker itself: each way of writing an import is seen (or correctly not)."""
    fake_package = tmp_path / "minipeft"
    (fake_package / "methods").mkdir(parents=True)
    path = fake_package / "methods" / "fake.py"
    path.write_text(source)
    monkeypatch.setitem(globals(), "PACKAGE_DIR", fake_package)
    assert any(is_outside_the_core(m) for _, m in imported_modules(path)) == expected


def modules_loaded_by(code: str) -> list[str]:
    """The minipeft modules outside the core that a fresh Python has loaded after `code`."""
    probe = (f"{code}\nimport sys\n"
             "print(sorted(m for m in sys.modules if m.startswith('minipeft')))")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_DIR.parent)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env=env, cwd=PACKAGE_DIR.parent).stdout
    loaded = ast.literal_eval(out.strip().splitlines()[-1])
    assert "minipeft.model" in loaded  # the probe really imported minipeft
    return [m for m in loaded if is_outside_the_core(m)]


@pytest.mark.parametrize("code", ["import minipeft.methods", "import minipeft",
                                  "import minipeft.icl, minipeft.analysis"])
def test_importing_the_library_loads_neither_interop_nor_course(code):
    assert modules_loaded_by(code) == []


def test_command_line_help_imports_no_course_tooling():
    """`python -m minipeft --help` builds the whole parser; bench, slides and homework are
    imported only when their command runs."""
    assert modules_loaded_by("from minipeft.__main__ import parser\n"
                             "parser().format_help()") == []
