"""Slides built from a notebook: one slide per heading, the notebook's outputs inside."""
import json
import re
from pathlib import Path

import pytest

from minipeft.slides import build_slides

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "07_intrinsic_dimension.ipynb"


@pytest.fixture(scope="module")
def deck(tmp_path_factory):
    [path] = build_slides([NOTEBOOK], tmp_path_factory.mktemp("slides"))
    return path


def test_one_slide_per_heading_cell(deck):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    headings = [c for c in cells if c["cell_type"] == "markdown"
                and re.match(r"\s*##? ", "".join(c["source"]))]
    first_is_heading = cells[0] in headings
    expected = len(headings) + (0 if first_is_heading else 1)
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


def test_a_missing_notebook_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebook"):
        build_slides([tmp_path / "nope.ipynb"], tmp_path)
