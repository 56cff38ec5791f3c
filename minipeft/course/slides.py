"""Lecture slides built from the notebooks (`python -m minipeft slides`).

Each notebook in notebooks/ becomes one reveal.js slide deck, slides/<notebook>.slides.html,
so what an instructor shows is exactly what the notebook computed (outputs included, nothing
re-run). The notebooks carry no slide markup of their own: every `#` or `##` heading in a
markdown cell starts a new slide (a cell with a heading in its middle is split there, in the
deck only) and every other cell continues the current one. Slides scroll, so a long code
cell with its plot stays on one slide.

The decks share one stylesheet, slides/notebook.css (nbconvert's notebook CSS, otherwise
repeated inside every deck), and load reveal.js from its public CDN when opened in a
browser; building them needs no network.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from minipeft.files import atomic_write_text
from minipeft.paths import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
SLIDES_DIR = REPO_ROOT / "slides"
SLIDE_HEADING = re.compile(r"##? ")  # a markdown line starting like this opens a slide
SHARED_CSS = "notebook.css"
STYLE_RUN = re.compile(r"(?:<style[^>]*>.*?</style>\s*)+", re.S)  # adjacent <style> blocks
STYLE_TEXT = re.compile(r"<style[^>]*>(.*?)</style>", re.S)


def heading_lines(source: str) -> list[int]:
    """Indices of the lines of a markdown source that open a slide (not inside ``` fences)."""
    found, in_fence = [], False
    for i, line in enumerate(source.split("\n")):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and SLIDE_HEADING.match(line):
            found.append(i)
    return found


def split_at_headings(cell) -> list:
    """A markdown cell as one cell per heading-led part (the text before a heading stays)."""
    lines = cell.source.split("\n")
    cuts = [i for i in heading_lines(cell.source) if i > 0]
    if not cuts:
        return [cell]
    parts = [lines[a:b] for a, b in zip([0] + cuts, cuts + [len(lines)])]
    # ids derived from the cell's own, so that rebuilding a deck writes the same HTML
    base_id = cell.get("id", "cell")
    return [nbformat.v4.new_markdown_cell("\n".join(part).strip("\n"), id=f"{base_id}-{k}")
            for k, part in enumerate(parts)]


def mark_slides(notebook):
    """A copy of `notebook` with reveal.js slide types on every cell, split at headings."""
    marked = copy.deepcopy(notebook)
    cells = []
    for cell in marked.cells:
        cells += split_at_headings(cell) if cell.cell_type == "markdown" else [cell]
    for i, cell in enumerate(cells):
        opens = cell.cell_type == "markdown" and heading_lines(cell.source)[:1] == [0]
        cell.metadata["slideshow"] = {"slide_type": "slide" if i == 0 or opens else "-"}
    marked.cells = cells
    return marked


def inline_css(body: str) -> tuple[str, re.Match | None]:
    """The CSS of nbconvert's run of inline <style> blocks in `body`, and where that run is."""
    run = STYLE_RUN.search(body)
    css = "\n".join(STYLE_TEXT.findall(run.group(0))) if run else ""
    return css, run


def build_slides(notebooks: list[Path] | None = None, out_dir: Path = SLIDES_DIR) -> list[Path]:
    """Write one .slides.html per notebook (default: all of notebooks/); returns the paths.

    nbconvert inlines the same ~260 KB of notebook CSS into every deck; it is written once, to
    out_dir/notebook.css, and each deck whose CSS matches links to it instead.
    """
    from nbconvert import SlidesExporter

    notebooks = sorted(NOTEBOOKS_DIR.glob("*.ipynb")) if notebooks is None else notebooks
    missing = [str(p) for p in notebooks if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no notebook at {missing}; give paths to .ipynb files")
    exporter = SlidesExporter(reveal_scroll=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shared_css = None  # the CSS written to notebook.css by this build (from the first deck)
    written = []
    for path in map(Path, notebooks):
        body, _ = exporter.from_notebook_node(mark_slides(nbformat.read(path, as_version=4)))
        css, run = inline_css(body)
        if run and shared_css is None:
            shared_css = css
            atomic_write_text(out_dir / SHARED_CSS, css)
        if run and css == shared_css:  # otherwise the deck keeps its own CSS inline
            link = f'<link href="{SHARED_CSS}" rel="stylesheet"/>\n'
            body = body[:run.start()] + link + body[run.end():]
        target = out_dir / f"{path.stem}.slides.html"
        atomic_write_text(target, body)
        written.append(target)
    return written
