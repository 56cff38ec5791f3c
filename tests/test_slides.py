"""Lecture decks: chosen from the notebooks by slideshow metadata, presented offline.

The last tests open every committed deck in headless Chromium with the network blocked, as a
lecture hall without wifi would, and look at what a browser really shows.
"""
import json
from html import escape
import re
import shutil
import subprocess
import time
from pathlib import Path

import nbformat
import pytest

from minipeft.course.slides import build_slides

REPO = Path(__file__).resolve().parent.parent
SLIDES = REPO / "slides"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
DECKS = sorted(SLIDES.glob("*.slides.html"))


def toy_deck(tmp_path, cells, name="toy"):
    """Build the deck of a notebook made of `cells`; returns its HTML."""
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    [deck] = build_slides([path], tmp_path / "out")
    return deck.read_text()


def markdown(source, slide_type=None):
    cell = nbformat.v4.new_markdown_cell(source)
    if slide_type is not None:
        cell.metadata["slideshow"] = {"slide_type": slide_type}
    return cell


def first_heading(notebook_path):
    """The first '# ' heading of a notebook, read from its JSON, without its number."""
    for cell in json.loads(notebook_path.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return re.sub(r"^\d+ *[·—–:.-] *", "", line[2:]).strip()
    return None


# --- building ---------------------------------------------------------------------------

def test_the_committed_decks_are_what_the_build_writes(tmp_path):
    build_slides(out_dir=tmp_path)
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(SLIDES) for p in SLIDES.rglob("*") if p.is_file())
    assert built == committed, "slides/ is stale: run `python -m minipeft slides`"
    for name in built:
        assert (tmp_path / name).read_bytes() == (SLIDES / name).read_bytes(), name


def test_without_metadata_each_heading_starts_a_slide(tmp_path):
    html = toy_deck(tmp_path, [
        markdown("# Title\nintro"),
        markdown("end of part one\n\n## Part two\nbody\n```\n# not a heading\n```"),
        nbformat.v4.new_code_cell("x = 1"),
    ])
    assert html.count("<section") == 2 * 2  # "# Title" and "## Part two", not the fenced line
    slides = html.split("<section")
    assert "end of part one" in slides[2] and "Part two" in slides[4]
    again = build_slides([tmp_path / "toy.ipynb"], tmp_path / "again")[0].read_text()
    assert again == html  # a rebuild writes the same bytes (stable cell ids)


def test_slideshow_metadata_chooses_slides_fragments_notes_and_skips(tmp_path):
    html = toy_deck(tmp_path, [
        markdown("# Title", "slide"),
        markdown("said aloud, not shown", "notes"),
        markdown("appears on a click", "fragment"),
        markdown("a detail below", "subslide"),
        markdown("## left out entirely", "skip"),
        nbformat.v4.new_code_cell("print('continues the slide above')"),
    ])
    assert "left out entirely" not in html
    assert re.search(r'<aside class="notes">\s*(<[^>]+>\s*)*<p>said aloud', html)
    assert re.search(r'<div class="fragment"[^>]*>\s*(<[^>]+>\s*)*<p>appears on a click', html)
    # one slide (outer <section>) holding two vertical slides (inner <section>s)
    assert html.count("<section") == 3
    assert html.index("a detail below") < html.index("continues the slide above")


def figure_cell(source):
    """A code cell with a (1-pixel) PNG output, as matplotlib leaves one."""
    cell = nbformat.v4.new_code_cell(source)
    cell.outputs = [nbformat.v4.new_output(
        "display_data", data={"image/png": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
                              "text/plain": "<Figure>"})]
    return cell


def printing_cell(lines):
    cell = nbformat.v4.new_code_cell("\n".join(f"line_{i} = {i}" for i in range(lines - 1))
                                     + "\nprint(result)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="the result\n")]
    return cell


def folded_code(html):
    return re.findall(r'<details class="deck-code"><summary>code</summary>(.*?)</details>',
                      html, re.S)


def test_a_figures_code_is_folded_and_short_code_is_shown(tmp_path):
    html = toy_deck(tmp_path, [markdown("# Title"), figure_cell("plt.plot(spectrum)"),
                               printing_cell(2)])
    [folded] = folded_code(html)
    assert "spectrum" in folded  # the plotting code, one click away
    assert "line_0" not in folded and "line_0" in html  # short code stays in view
    assert "data:image/png;base64" in html[html.index(folded) + len(folded):]  # the figure


def test_long_code_with_an_output_is_folded_and_its_output_shown(tmp_path):
    html = toy_deck(tmp_path, [markdown("# Title"), printing_cell(7),
                               nbformat.v4.new_code_cell("\n".join(["x = 1"] * 9))])
    [folded] = folded_code(html)  # 7 lines with an output; 9 lines without one stay shown
    assert "line_5" in folded and "the result" in html.split("</details>")[-1]


def test_a_live_only_cell_is_left_out_of_the_deck(tmp_path):
    slider = nbformat.v4.new_code_cell("interact(draw_spectrum, r=(1, 64))")
    slider.metadata["tags"] = ["live-only", "nbval-ignore-output"]
    slider.metadata["slideshow"] = {"slide_type": "fragment"}
    html = toy_deck(tmp_path, [markdown("# Title"), slider, markdown("after the slider")])
    assert "draw_spectrum" not in html and "after the slider" in html


def test_an_unknown_slide_type_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cell 1.*'slides'.*slide, subslide"):
        toy_deck(tmp_path, [markdown("# Title"), markdown("x", "slides")])


def test_the_title_is_the_lecture_topic(tmp_path):
    html = toy_deck(tmp_path, [markdown("intro"), markdown("# 03 · Adapters & bias <b>")],
                    name="003_5391813694bbfed5")
    assert "<title>Adapters &amp; bias &lt;b&gt;</title>" in html
    assert "5391813694bbfed5" not in html  # the notebook's file name is no title
    with pytest.raises(ValueError, match="no '# ' heading"):
        toy_deck(tmp_path, [markdown("## only a section")])


def test_math_is_rendered_to_mathml_at_build_time(tmp_path):
    html = toy_deck(tmp_path, [markdown(
        "# Math\n$$h = W_0 x + \\frac{\\alpha}{r} B A x$$\ninline $x \\in \\mathbb{R}^d$, "
        "code `$HOME`, costs $5 and $6, escaped \\$")])
    body = html.split("<body", 1)[1]
    visible = re.sub(r"<annotation.*?</annotation>", "", body, flags=re.S)
    assert "$$" not in visible and "\\frac" not in visible
    assert body.count('<math xmlns="http://www.w3.org/1998/Math/MathML"') == 2
    assert "<mfrac>" in body and 'display="block"' in body
    assert "<mi>ℝ</mi>" in body  # \mathbb{R} as the Unicode letter browsers draw
    assert "<code>$HOME</code>" in body and "costs $5 and $6" in body


def test_latex_that_katex_cannot_parse_is_an_error_naming_the_cell(tmp_path):
    with pytest.raises(ValueError, match=r"cell 1: KaTeX cannot render \$\\frac\{a\}\$"):
        toy_deck(tmp_path, [markdown("# T\n## split here"), markdown("broken $\\frac{a}$")])


def test_a_missing_notebook_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebook"):
        build_slides([tmp_path / "nope.ipynb"], tmp_path)


# --- the committed decks ----------------------------------------------------------------

def test_every_notebook_has_its_deck_titled_by_its_topic():
    assert [d.name for d in DECKS] == [f"{n.stem}.slides.html" for n in NOTEBOOKS]
    for notebook, deck in zip(NOTEBOOKS, DECKS):
        topic = first_heading(notebook)
        html = deck.read_text()
        title = re.search(r"<title>(.*?)</title>", html).group(1)
        assert topic and title == topic.replace("&", "&amp;"), deck.name
        first_slide = html.split("<section", 2)[2]
        assert re.search(r"<h1[^>]*>[^<]*" + re.escape(title), first_slide), deck.name
        assert "Notebook slides" not in html and not re.search(r"\d{3}_[0-9a-f]{16}", html)


def test_the_shown_cells_outputs_are_in_the_decks():
    for notebook, deck in zip(NOTEBOOKS, DECKS):
        html = deck.read_text()
        for cell in json.loads(notebook.read_text())["cells"]:
            slide_type = cell["metadata"].get("slideshow", {}).get("slide_type")
            if cell["cell_type"] != "code" or slide_type == "skip":
                continue
            for out in cell.get("outputs", []):
                if out.get("name") == "stdout":
                    for line in "".join(out["text"]).splitlines():
                        words = line.split()
                        assert not words or escape(words[0], quote=False) in html
                png = out.get("data", {}).get("image/png")
                assert png is None or png.strip()[:200] in html, deck.name


def test_decks_load_only_local_files():
    """Every src/href of a deck is a file in slides/ (or a data: URL), never http(s)."""
    for deck in DECKS:
        html = deck.read_text()
        for ref in re.findall(r'(?:src|href)="([^"#][^"]*)"', html):
            assert ref.startswith("data:") or (SLIDES / ref).is_file(), (deck.name, ref)
    css = (SLIDES / "notebook.css").read_text()
    assert not re.search(r"url\(\s*['\"]?https?:|@import", css)


# --- in a browser -----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y "
                             "chromium; .ci/run installs it)")
# The flags of a quiet headless Chromium, and no network: every host name fails to resolve
# and any proxied request goes to a closed port.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
                  "--window-size=1280,800", "--remote-debugging-port=0"]


class DevTools:
    """A headless Chromium driven over the Chrome DevTools Protocol (one page)."""

    def __init__(self, user_data_dir: Path):
        import websocket

        self.process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = user_data_dir / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            assert time.monotonic() < deadline and self.process.poll() is None, \
                "chromium did not start its DevTools server"
            time.sleep(0.1)
        port, path = port_file.read_text().split()
        self.socket = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=60,
                                                  suppress_origin=True)
        self.next_id, self.events, self.session = 0, [], None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable")

    def call(self, method, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self.next_id:
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]
            self.events.append(reply)

    def wait_for_event(self, method):
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.socket.recv()))

    def js(self, expression):
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def press(self, key, key_code):
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                      windowsVirtualKeyCode=key_code)

    def close(self):
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = DevTools(tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


# JavaScript run in a deck: is the current slide the one drawn at its own centre?
SLIDE_IS_VISIBLE = """(() => {
  const slide = Reveal.getCurrentSlide(), box = slide.getBoundingClientRect();
  const seen = document.elementFromPoint(box.left + 20, box.top + 40);
  return seen !== null && seen.closest('section') === slide;
})()"""
# Per slide: raw TeX in the text a viewer reads, code boxes wider than their slide.
SLIDE_PROBLEMS = """(() => {
  const slide = Reveal.getCurrentSlide(), problems = [];
  const text = slide.innerText;
  if (text.includes('$$') || text.includes('\\\\frac')) problems.push('raw TeX: ' + text);
  for (const pre of slide.querySelectorAll('pre'))
    if (pre.scrollWidth > pre.clientWidth + 1) problems.push('cut-off code: ' + pre.innerText);
  return problems;
})()"""
# Whole deck: text outside code and formulas (speaker notes included) with $ or \\command.
MARKDOWN_TEX = """(() => {
  const found = [];
  for (const cell of document.querySelectorAll('.jp-MarkdownCell')) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
      const node = walker.currentNode;
      if (node.parentElement.closest('code, pre, math')) continue;
      if (/\\$|\\\\[A-Za-z]+/.test(node.textContent)) found.push(node.textContent);
    }
  }
  return found;
})()"""
READY = """new Promise((resolve, reject) => {
  const start = Date.now();
  const poll = () => (window.Reveal && Reveal.isReady()) ? document.fonts.ready.then(
      () => resolve(true)) : Date.now() - start > 20000 ? reject('reveal.js never started')
      : setTimeout(poll, 50);
  poll();
})"""


@needs_chromium
@pytest.mark.parametrize("deck", DECKS, ids=[d.stem for d in DECKS])
def test_the_deck_presents_offline_in_chromium(browser, deck):
    browser.events.clear()
    browser.call("Page.navigate", url=deck.as_uri())
    browser.wait_for_event("Page.loadEventFired")
    assert browser.js(READY)

    # reveal.js started, and the right-arrow key moves to another slide, now the visible one
    assert browser.js("Reveal.getTotalSlides()") > 1
    assert browser.js("Reveal.getIndices().h") == 0 and browser.js(SLIDE_IS_VISIBLE)
    browser.js("window.firstSlide = Reveal.getCurrentSlide(); true")
    browser.press("ArrowRight", 39)
    time.sleep(0.3)
    assert browser.js("Reveal.getIndices().h") == 1
    assert browser.js("Reveal.getCurrentSlide() !== window.firstSlide")
    assert browser.js(SLIDE_IS_VISIBLE)

    # every slide: no raw TeX on screen, no code line cut off
    slides = browser.js("Reveal.getSlides().map(s => Reveal.getIndices(s))")
    for where in slides:
        browser.js(f"Reveal.slide({where['h']}, {where.get('v') or 0}); true")
        assert browser.js(SLIDE_PROBLEMS) == [], where
    assert browser.js(MARKDOWN_TEX) == []
    notebook = REPO / "notebooks" / deck.name.replace(".slides.html", ".ipynb")
    if "$" in notebook.read_text():
        assert browser.js("document.querySelectorAll('math').length") > 0

    # figures decoded, the theme's font loaded from slides/, no script error
    assert browser.js("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
                      ".map(i => i.src.slice(0, 60))") == []
    if '"image/png"' in notebook.read_text():  # a notebook with figures gives a deck with some
        assert browser.js("document.images.length") > 0
    assert browser.js("[...document.fonts].some(f => f.family.includes('Source Sans Pro')"
                      " && f.status === 'loaded')")
    assert browser.js("[...document.fonts].filter(f => f.status === 'error').length") == 0
    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    assert errors == []

    # no request left the machine, and every local file was found
    requests = [e["params"]["request"]["url"] for e in browser.events
                if e.get("method") == "Network.requestWillBeSent"]
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
    failed = [e["params"] for e in browser.events if e.get("method") == "Network.loadingFailed"]
    assert failed == []
