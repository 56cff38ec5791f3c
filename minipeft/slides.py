"""Lecture slides built from the notebooks (`python -m minipeft slides`).

Each notebook in notebooks/ becomes one reveal.js slide deck, slides/<notebook>.slides.html,
so what an instructor shows is exactly what the notebook computed (outputs included, nothing
re-run). The notebooks carry no slide markup of their own: a markdown cell that opens with a
`#` or `##` heading starts a new slide and every other cell continues the current one.
Slides scroll, so a long code cell with its plot stays on one slide.

The decks load reveal.js from its public CDN when opened in a browser; building them needs
no network.
"""
from __future__ import annotations

import copy
from pathlib import Path

import nbformat

from minipeft.paths import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
SLIDES_DIR = REPO_ROOT / "slides"
SLIDE_HEADINGS = ("# ", "## ")  # a markdown cell opening with one of these starts a slide


def starts_slide(cell) -> bool:
    return cell.cell_type == "markdown" and cell.source.lstrip().startswith(SLIDE_HEADINGS)


def mark_slides(notebook):
    """A copy of `notebook` with reveal.js slide types set on every cell."""
    marked = copy.deepcopy(notebook)
    for i, cell in enumerate(marked.cells):
        slide_type = "slide" if i == 0 or starts_slide(cell) else "-"
        cell.metadata["slideshow"] = {"slide_type": slide_type}
    return marked


def build_slides(notebooks: list[Path] | None = None, out_dir: Path = SLIDES_DIR) -> list[Path]:
    """Write one .slides.html per notebook (default: all of notebooks/); returns the paths."""
    from nbconvert import SlidesExporter

    notebooks = sorted(NOTEBOOKS_DIR.glob("*.ipynb")) if notebooks is None else notebooks
    missing = [str(p) for p in notebooks if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no notebook at {missing}; give paths to .ipynb files")
    exporter = SlidesExporter(reveal_scroll=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in map(Path, notebooks):
        body, _ = exporter.from_notebook_node(mark_slides(nbformat.read(path, as_version=4)))
        target = out_dir / f"{path.stem}.slides.html"
        target.write_text(body, encoding="utf-8")
        written.append(target)
    return written
