"""`build`: student notebooks and Gradescope autograder zips from the master notebooks,
with otter assign."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from minipeft.course.homework.exercise_bank import exercises
from minipeft.files import atomic_write_text

REPO = Path(__file__).resolve().parents[3]
MASTER_DIR = REPO / "notebooks" / "homework"
DEFAULT_OUT = REPO / "build" / "homework"


def master_notebooks() -> list[Path]:
    return sorted(MASTER_DIR.glob("hw*.ipynb"))


def build(out: str | Path = DEFAULT_OUT, homeworks: list[str] | None = None) -> list[Path]:
    """otter assign on the master notebooks (default all) → OUT/<hw>/student/<hw>.ipynb and
    OUT/<hw>/autograder/<hw>-autograder.zip."""
    out = Path(out)
    masters = master_notebooks()
    if homeworks is not None:
        for hw in homeworks:
            exercises(hw)  # a clear error for an unknown name
        masters = [m for m in masters if m.stem in homeworks]
    written = []
    for master in masters:
        hw = master.stem
        with tempfile.TemporaryDirectory(prefix="minipeft-assign-") as tmp:
            result = subprocess.run(
                [sys.executable, "-m", "otter", "assign", "--no-run-tests", "--no-pdfs",
                 str(master), tmp], capture_output=True, text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)})
            if result.returncode != 0:
                raise RuntimeError(f"otter assign failed on {master}:\n{result.stderr[-2000:]}")
            student = Path(tmp, "student", master.name)
            [zip_path] = Path(tmp, "autograder").glob("*.zip")
            target = out / hw
            atomic_write_text(target / "student" / f"{hw}.ipynb", student.read_text())
            written.append(target / "student" / f"{hw}.ipynb")
            written.append(add_minipeft(zip_path, target / "autograder" / f"{hw}-autograder.zip"))
    return written


def add_minipeft(zip_path: Path, target: Path) -> Path:
    """Copy otter's zip and add minipeft's source under files/ (otter puts files/ beside the
    submission on Gradescope, so the tests' `import minipeft` finds it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(zip_path) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for item in source.infolist():
            z.writestr(item, source.read(item))
        for path in sorted((REPO / "minipeft").rglob("*.py")):
            z.write(path, f"files/{path.relative_to(REPO).as_posix()}")
    os.replace(tmp, target)
    return target

