"""Lecture slides built from the notebooks (`python -m minipeft slides`).

Each notebook in notebooks/ becomes one reveal.js deck, slides/<notebook>.slides.html, built
from what the notebook already computed (outputs included, nothing re-run). The notebook stays
the full text; the deck is chosen from it by Jupyter's slideshow metadata on each cell
(`metadata.slideshow.slide_type`, the field that JupyterLab's property inspector and RISE set):

    slide     opens a new slide          subslide  opens a slide below the current one
    fragment  appears on the next click   -         continues the current slide
    skip      left out of the deck        notes     speaker notes of the current slide

A cell without that field continues the current slide, except a markdown cell that starts
with a `#` or `##` heading, which opens one; a markdown cell with such a heading in its middle
is split there (in the deck only). So a notebook with no slideshow metadata at all still gives
one slide per heading.

Two rules keep code from crowding the slides:
- a code cell that draws a figure, or prints a result from more than FOLD_LINES lines of
  code, shows its output; its code is folded under a "code" line that opens on a click (a
  <details> element: no script needed). Short code stays in view: it is often the point;
- a cell tagged `live-only` (Jupyter's `metadata.tags`) is left out of the static deck: it
  is for presenting live with RISE, e.g. an ipywidgets slider, which needs a running kernel.

Decks present offline: nothing is fetched when one is opened.
- reveal.js (script, theme, fonts, speaker-notes plugin) is copied into slides/reveal.js/
  from the PyPI package sphinx-revealjs, which ships reveal.js's release files;
- math is rendered here, at build time, by KaTeX (the PyPI package pykatex runs KaTeX in an
  embedded JavaScript engine) to MathML, which the browser draws itself: no script, no font
  file, and no raw `$...$` if the browser has no JavaScript;
- nbconvert's notebook CSS, the same for every deck, is written once to slides/notebook.css.
Both packages are pinned in requirements.txt, so a rebuild writes the same bytes.
"""
from __future__ import annotations

import copy
import re
import unicodedata
from pathlib import Path

import nbformat

from minipeft.files import atomic_write_bytes, atomic_write_text
from minipeft.paths import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
SLIDES_DIR = REPO_ROOT / "slides"
SLIDE_HEADING = re.compile(r"##? ")  # a markdown line starting like this opens a slide
SLIDE_TYPES = ("slide", "subslide", "fragment", "-", "skip", "notes")
LIVE_ONLY_TAG = "live-only"  # a cell only RISE's live presentation shows
FIGURE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")
FOLD_LINES = 6  # longer code that has an output is folded in the deck
FOLDED_CODE = "deck_folded_code"  # deck-only cell metadata: fold this cell's code
SHARED_CSS = "notebook.css"
STYLE_RUN = re.compile(r"(?:<style[^>]*>.*?</style>\s*)+", re.S)  # adjacent <style> blocks
STYLE_TEXT = re.compile(r"<style[^>]*>(.*?)</style>", re.S)
INSTALL_HINT = "pip install -r requirements.txt (it pins sphinx-revealjs and pykatex)"

# reveal.js files a deck loads, relative to the reveal.js release folder. The theme's font
# stylesheet also lists .eot and .ttf copies; browsers take the .woff ones listed before them.
REVEAL_FILES = [
    "LICENSE",
    "dist/reveal.css",
    "dist/reveal.js",
    "dist/theme/white.css",
    "dist/theme/fonts/source-sans-pro/LICENSE",
    "dist/theme/fonts/source-sans-pro/source-sans-pro.css",
    *[f"dist/theme/fonts/source-sans-pro/source-sans-pro-{face}.woff"
      for face in ("regular", "italic", "semibold", "semibolditalic")],
    "plugin/notes/notes.js",
]
REVEAL_DIR = "reveal.js"  # under slides/

# Math in markdown, found in this order so that `$` inside code is left alone: fenced code,
# inline code, an escaped dollar, display math $$...$$, inline math $...$ (no space just
# inside the dollars, as in pandoc, so "costs $5 and $6" is not math).
MARKDOWN_MATH = re.compile(
    r"(?P<fence>```.*?```)|(?P<code>`[^`]*`)|(?P<escaped>\\\$)"
    r"|\$\$(?P<display>.+?)\$\$|\$(?P<inline>[^\s$](?:[^$]*?[^\s$\\])?)\$", re.S)
# KaTeX writes \mathbb{R} as <mi mathvariant="double-struck">R</mi>; browsers implementing
# MathML Core ignore mathvariant (all but "normal"), so those letters are written as the
# Unicode mathematical letters (U+1D400 block and the letterlike ones such as ℝ) instead.
STYLED_LETTERS = re.compile(r'<mi mathvariant="(?P<style>[a-z-]+)">(?P<text>[^<]+)</mi>')
UNICODE_STYLE = {"bold": "BOLD", "italic": "ITALIC", "bold-italic": "BOLD ITALIC",
                 "double-struck": "DOUBLE-STRUCK", "script": "SCRIPT", "fraktur": "FRAKTUR",
                 "sans-serif": "SANS-SERIF", "monospace": "MONOSPACE"}
MATH_TOKEN = "MINIPEFTMATH{:06d}X"  # letters and digits only, so markdown leaves it as is
MATH_TOKEN_PATTERN = re.compile(r"MINIPEFTMATH(\d{6})X")
ANCHOR_ATTRIBUTE = re.compile(r'(?:id|href)="[^"]*"')  # a heading's anchor, made from its text

DECK_CSS = """\
:root {  /* nbconvert's notebook sizes, read from the back of a lecture hall */
  --jp-content-font-size1: 24px; --jp-ui-font-size1: 20px; --jp-code-font-size: 17px;
}
.reveal .slides { text-align: left; }
.reveal .slides section { height: 100%; overflow-y: auto; }  /* a tall slide scrolls */
.reveal h1, .reveal h2, .reveal h3 { text-transform: none; }  /* the theme shouts */
.reveal .jp-RenderedHTMLCommon h1 { font-size: 46px; }
.reveal .jp-RenderedHTMLCommon h2 { font-size: 38px; }
.reveal .jp-RenderedHTMLCommon h3 { font-size: 30px; }
a.anchor-link { display: none; }
.jp-InputPrompt, .jp-OutputPrompt { display: none; }
/* long code lines wrap instead of running off the slide */
.reveal pre { white-space: pre-wrap; overflow-wrap: anywhere; width: 100%;
              box-shadow: none; margin: 0.2em 0; }
.reveal .jp-Cell pre { font-size: var(--jp-code-font-size); line-height: 1.35; }
.reveal section img { max-height: 480px; margin: 0.2em 0; }
details.deck-code > summary { font-size: 16px; color: #777; cursor: pointer; }
math { font-family: "Latin Modern Math", "STIX Two Math", "Cambria Math",
       "DejaVu Math TeX Gyre", math; }
math[display="block"] { margin: 0.4em 0; }
"""

# The deck page around nbconvert's reveal.js cells (which turn the slideshow metadata into
# <section> slides, fragments and <aside class="notes">): local files only.
DECK_TEMPLATE = """\
{%- extends 'base.html.j2' -%}
{%- block header -%}
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8" />
<meta name="viewport" content="width=device-width, initial-scale=1" />
<title>{{ resources.deck_title | escape_html }}</title>
{% for css in resources.inlining.css -%}
<style type="text/css">
{{ css }}
</style>
{% endfor -%}
{{ resources.include_css("static/index.css") }}
{{ resources.include_css("static/theme-light.css") }}
<link rel="stylesheet" href="REVEAL/dist/reveal.css" />
<link rel="stylesheet" href="REVEAL/dist/theme/white.css" />
<style type="text/css">
{{ resources.deck_css }}
</style>
</head>
{%- endblock header -%}
{%- block body_header -%}
<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<div class="reveal">
<div class="slides">
{%- endblock body_header -%}
{%- block input_group -%}
{%- if cell.metadata.get("FOLDED") -%}
<details class="deck-code"><summary>code</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock input_group -%}
{%- block body_footer -%}
</div>
</div>
<script src="REVEAL/dist/reveal.js"></script>
<script src="REVEAL/plugin/notes/notes.js"></script>
<script>
Reveal.initialize({
  hash: true, center: false, transition: "none",
  width: 1280, height: 800, margin: 0.04,
  plugins: [RevealNotes]
});
</script>
</body>
{%- endblock body_footer -%}
{%- block footer -%}
</html>
{% endblock footer -%}
""".replace("REVEAL", REVEAL_DIR).replace("FOLDED", FOLDED_CODE)


def heading_lines(source: str) -> list[int]:
    """Indices of the lines of a markdown source that open a slide (not inside ``` fences)."""
    found, in_fence = [], False
    for i, line in enumerate(source.split("\n")):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and SLIDE_HEADING.match(line):
            found.append(i)
    return found


def lecture_topic(notebook, path: Path) -> str:
    """The deck's title: the notebook's first `# ` heading, without its number ("02 · ")."""
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.split("\n"):
            if line.startswith("# "):
                return re.sub(r"^\d+\s*[·—–:.-]\s*", "", line[2:].strip())
    raise ValueError(f"{path} has no '# ' heading; a deck takes its title from the "
                     "notebook's first heading, so start the notebook with '# <topic>'")


def given_slide_type(cell, index: int, path: Path) -> str | None:
    """The cell's slideshow slide_type, None when it has none; an unknown one is an error."""
    slide_type = cell.metadata.get("slideshow", {}).get("slide_type")
    if slide_type is not None and slide_type not in SLIDE_TYPES:
        raise ValueError(f"{path}, cell {index}: slideshow slide_type {slide_type!r} is not "
                         f"one of {', '.join(SLIDE_TYPES)}; fix the cell's metadata")
    return slide_type


def split_at_headings(cell) -> list:
    """A markdown cell as one cell per heading-led part (the text before a heading stays)."""
    lines = cell.source.split("\n")
    cuts = [i for i in heading_lines(cell.source) if i > 0]
    if not cuts:
        return [cell]
    parts = [lines[a:b] for a, b in zip([0] + cuts, cuts + [len(lines)])]
    # ids derived from the cell's own, so that rebuilding a deck writes the same HTML
    base_id = cell.get("id", "cell")
    cells = [nbformat.v4.new_markdown_cell("\n".join(part).strip("\n"), id=f"{base_id}-{k}")
             for k, part in enumerate(parts)]
    cells[0].metadata = copy.deepcopy(cell.metadata)
    return cells


def folds_its_code(cell) -> bool:
    """True for a code cell whose output is the point: a figure, or long code's result."""
    if cell.cell_type != "code" or not cell.outputs:
        return False
    draws = any(kind in output.get("data", {}) for output in cell.outputs
                for kind in FIGURE_TYPES)
    return draws or len(cell.source.strip().splitlines()) > FOLD_LINES


def deck_cells(notebook, path: Path) -> list:
    """The notebook's cells, split at headings, each with the slide_type the deck uses; a
    figure's (or long result's) code marked to be folded, live-only cells skipped."""
    cells = []
    for index, cell in enumerate(notebook.cells):
        given = given_slide_type(cell, index, path)
        if LIVE_ONLY_TAG in cell.metadata.get("tags", []):
            given = "skip"
        if folds_its_code(cell):
            cell.metadata[FOLDED_CODE] = True
        pieces = [cell]
        if cell.cell_type == "markdown" and given not in ("skip", "notes"):
            pieces = split_at_headings(cell)
        for k, piece in enumerate(pieces):
            opens = piece.cell_type == "markdown" and heading_lines(piece.source)[:1] == [0]
            if k == 0 and given is not None:
                slide_type = given
            else:
                slide_type = "slide" if opens else "-"
            piece.metadata.setdefault("slideshow", {})["slide_type"] = slide_type
            cells.append(piece)
    return cells


def styled_letter(char: str, style: str) -> str:
    """`char` as its Unicode mathematical letter in `style` (e.g. R, DOUBLE-STRUCK: ℝ)."""
    if not (char.isascii() and char.isalpha()):
        return char
    case = "CAPITAL" if char.isupper() else "SMALL"
    letterlike = style.replace("FRAKTUR", "BLACK-LETTER")  # ℭ ℌ ℑ ℜ ℨ carry that name
    for name in (f"MATHEMATICAL {style} {case} {char.upper()}",
                 f"{letterlike} {case} {char.upper()}"):
        try:
            return unicodedata.lookup(name)
        except KeyError:
            continue
    return char


def unicode_styled_letters(mathml: str) -> str:
    """`mathml` with each <mi mathvariant=STYLE> letter written as its Unicode letter."""
    def restyle(match: re.Match) -> str:
        style = UNICODE_STYLE.get(match.group("style"))
        if style is None:  # "normal" is drawn by browsers as it is
            return match.group(0)
        return "<mi>" + "".join(styled_letter(c, style) for c in match.group("text")) + "</mi>"
    return STYLED_LETTERS.sub(restyle, mathml)


def render_math(tex: str, display: bool, where: str) -> str:
    """KaTeX's MathML for one formula; a formula KaTeX cannot parse is an error."""
    try:
        import pykatex
    except ImportError as error:
        raise ImportError(f"rendering the slides' math needs pykatex; {INSTALL_HINT}") from error
    try:
        mathml = pykatex.renderToString(tex, displayMode=display, output="mathml")
    except pykatex.ParseError as error:
        raise ValueError(f"{where}: KaTeX cannot render ${tex}$ ({error}); fix the LaTeX "
                         "in the notebook") from error
    return unicode_styled_letters(mathml)


def replace_math(source: str, rendered: list[str], where: str) -> str:
    """`source` with each formula replaced by a token; its MathML is appended to `rendered`."""
    def substitute(match: re.Match) -> str:
        tex = match.group("display") or match.group("inline")
        if tex is None:  # code, or an escaped dollar: left as it is
            return match.group(0)
        display = match.group("display") is not None
        rendered.append(render_math(tex.strip(), display, where))
        token = MATH_TOKEN.format(len(rendered) - 1)
        return f"\n\n{token}\n\n" if display else token
    return MARKDOWN_MATH.sub(substitute, source)


def deck_notebook(notebook, path: Path) -> tuple:
    """A copy of `notebook` laid out as a deck, and the MathML its math tokens stand for."""
    deck = copy.deepcopy(notebook)
    rendered: list[str] = []
    for index, cell in enumerate(deck.cells):  # before splitting, so errors name the cell
        if cell.cell_type == "markdown":
            cell.source = replace_math(cell.source, rendered, f"{path}, cell {index}")
    deck.cells = deck_cells(deck, path)
    return deck, rendered


def inline_css(body: str) -> tuple[str, re.Match | None]:
    """The CSS of nbconvert's run of inline <style> blocks in `body`, and where that run is."""
    run = STYLE_RUN.search(body)
    css = "\n".join(STYLE_TEXT.findall(run.group(0))) if run else ""
    return css, run


def reveal_release() -> Path:
    """The folder of reveal.js's release files inside the installed sphinx-revealjs."""
    try:
        import sphinx_revealjs
    except ImportError as error:
        raise ImportError(f"the slides' reveal.js comes from sphinx-revealjs; {INSTALL_HINT}"
                          ) from error
    return Path(sphinx_revealjs.__file__).parent / "_static" / "revealjs"


def copy_reveal(out_dir: Path) -> None:
    """Copy the reveal.js files the decks load into out_dir/reveal.js/, byte for byte."""
    release = reveal_release()
    for name in REVEAL_FILES:
        atomic_write_bytes(out_dir / REVEAL_DIR / name, (release / name).read_bytes())


def deck_exporter():
    """nbconvert's reveal.js exporter with the local-files page of DECK_TEMPLATE."""
    from jinja2 import DictLoader
    from nbconvert import SlidesExporter

    return SlidesExporter(template_file="minipeft_deck.html.j2",
                          extra_loaders=[DictLoader({"minipeft_deck.html.j2": DECK_TEMPLATE})])


def deck_html(exporter, path: Path) -> str:
    """The HTML of one deck, its math rendered, its CSS still inline."""
    notebook = nbformat.read(path, as_version=4)
    deck, rendered = deck_notebook(notebook, path)
    resources = {"deck_title": lecture_topic(notebook, path), "deck_css": DECK_CSS}
    body, _ = exporter.from_notebook_node(deck, resources=resources)
    # math in a heading also lands in its anchor's id and link, where markup cannot go
    body = ANCHOR_ATTRIBUTE.sub(lambda m: MATH_TOKEN_PATTERN.sub("", m.group(0)), body)
    return MATH_TOKEN_PATTERN.sub(lambda m: rendered[int(m.group(1))], body)


def build_slides(notebooks: list[Path] | None = None, out_dir: Path = SLIDES_DIR) -> list[Path]:
    """Write one .slides.html per notebook (default: all of notebooks/); returns the paths.

    nbconvert inlines the same ~260 KB of notebook CSS into every deck; it is written once, to
    out_dir/notebook.css, and each deck whose CSS matches links to it instead.
    """
    notebooks = sorted(NOTEBOOKS_DIR.glob("*.ipynb")) if notebooks is None else notebooks
    missing = [str(p) for p in notebooks if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no notebook at {missing}; give paths to .ipynb files")
    exporter = deck_exporter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_reveal(out_dir)
    shared_css = None  # the CSS written to notebook.css by this build (from the first deck)
    written = []
    for path in map(Path, notebooks):
        body = deck_html(exporter, path)
        css, run = inline_css(body)
        if run and shared_css is None:
            shared_css = css
            atomic_write_text(out_dir / SHARED_CSS, css)
        if run and css == shared_css:  # otherwise the deck keeps its own CSS inline
            link = f'<link rel="stylesheet" href="{SHARED_CSS}" />\n'
            body = body[:run.start()] + link + body[run.end():]
        target = out_dir / f"{path.stem}.slides.html"
        atomic_write_text(target, body)
        written.append(target)
    return written
