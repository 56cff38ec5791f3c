"""Slides built from a notebook: one slide per heading, the notebook's outputs inside."""
import json
import re
from pathlib import Path

import pytest

from minipeft.course.slides import build_slides

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "07_intrinsic_dimension.ipynb"


@pytest.fixture(scope="module")
def deck(tmp_path_factory):
    [path] = build_slides([NOTEBOOK], tmp_path_factory.mktemp("slides"))
    return path


def test_one_slide_per_heading(deck):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    markdown = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    assert not any("```" in text for text in markdown)  # so every "# " line is a heading
    headings = sum(len(re.findall(r"^##? ", text, flags=re.M)) for text in markdown)
    first_is_heading = cells[0]["cell_type"] == "markdown" and re.match(
        r"##? ", "".join(cells[0]["source"]))
    expected = headings + (0 if first_is_heading else 1)
    html = deck.read_text()
    # reveal.js wraps every slide in an outer <section> holding one inner <section>
    assert html.count("<section") == 2 * expected


def test_the_notebook_outputs_are_in_the_deck(deck):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    printed = [line.strip() for c in cells if c["cell_type"] == "code"
               for out in c.get("outputs", []) if out.get("name") == "stdout"
               for line in "".join(out["text"]).splitlines() if line.strip()]
    assert printed, "the notebook has no printed output to look for"
    html = deck.read_text()
    assert all(line.split()[0] in html for line in printed)
    assert html.count("data:image/png;base64") >= 1  # the plot travels with the slide


def test_the_notebook_css_is_shared_not_inlined(deck):
    html = deck.read_text()
    css = (deck.parent / "notebook.css").read_text()
    assert '<link href="notebook.css" rel="stylesheet"/>' in html and "<style" not in html
    assert len(css) > 100_000 and ".jp-" in css  # JupyterLab's notebook styles


def test_a_heading_inside_a_cell_starts_a_slide_there(tmp_path):
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title\nintro"),
        nbformat.v4.new_markdown_cell(
            "end of part one\n\n## Part two\nbody\n```\n# not a heading\n```"),
        nbformat.v4.new_code_cell("x = 1"),
    ])
    path = tmp_path / "toy.ipynb"
    nbformat.write(notebook, path)
    [deck] = build_slides([path], tmp_path)
    html = deck.read_text()
    assert html.count("<section") == 2 * 2  # "# Title" and "## Part two", not the fenced line
    slides = html.split("<section")
    assert "end of part one" in slides[2] and "Part two" in slides[4]
    assert nbformat.read(path, as_version=4) == notebook  # the notebook itself is untouched
    [again] = build_slides([path], tmp_path / "again")
    assert again.read_text() == html  # a rebuild writes the same bytes (stable cell ids)


def test_a_missing_notebook_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebook"):
        build_slides([tmp_path / "nope.ipynb"], tmp_path)
