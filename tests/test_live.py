"""Presenting live: the sliders' precomputed data and drawings, and RISE served offline.

The drawings are checked against what the test computes itself from the stored files (the
SVD of (α/r) B A, a principal-component projection and cosine nearest neighbours in numpy),
and the stored scores against the studies' own tables. The last test starts a Jupyter
server as `jupyter lab` would, opens a notebook as a RISE slideshow in headless Chromium
with the network blocked, and checks that it starts and asks nothing of another machine.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minipeft.course.live_demos import (INIT_LOSSES_NAME, INIT_LRS, INIT_STEPS,  # noqa: E402
                                        LENGTHS, LIVE_DEMO_DIR, RANKS, build_live_demos,
                                        draw_lora_spectrum, draw_prompt_map, draw_prompt_scores,
                                        init_config, init_folder, load_init_prompts,
                                        load_lora_updates, load_prompts, lora_folder,
                                        prompt_folder, read_scores)
from minipeft.course.studies import read_results, results_path  # noqa: E402
from minipeft.pretrained import load_pretrained  # noqa: E402
from minipeft.prompt_analysis import VocabularyPCA  # noqa: E402
from minipeft.tokenizer import load_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WIDGET_NOTEBOOKS = ["05_soft_prompts_prefix_spot.ipynb", "12_svd.ipynb"]


def stored_lora_update(r: int, name: str) -> torch.Tensor:
    """(α/r) B A read straight from the adapter's files (Hu et al., 2021, eq. 3)."""
    folder = lora_folder(LIVE_DEMO_DIR, r)
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(folder / "adapter_model.safetensors")
    A = tensors[f"base_model.{name}.lora_A"].double()
    B = tensors[f"base_model.{name}.lora_B"].double()
    return config["alpha"] / config["r"] * (B @ A)


@pytest.fixture(scope="module")
def updates():
    return load_lora_updates(ranks=(1, 8, 64))


@pytest.mark.parametrize("r", [1, 8, 64])
def test_the_spectrum_slider_draws_the_singular_values_of_the_stored_BA(updates, r):
    name = "blocks.2.attn.v"
    fig, ax = plt.subplots()
    full = torch.randn(128, 128, generator=torch.Generator().manual_seed(0))
    draw_lora_spectrum(ax, updates, r, name, full_update=full)
    full_line, lora_line = ax.get_lines()[:2]
    expected = torch.linalg.svdvals(stored_lora_update(r, name)).numpy()
    drawn = lora_line.get_ydata()
    # the non-zero part agrees to float rounding; past index r both are rounding noise
    assert np.allclose(drawn[:r], expected[:r], rtol=1e-5)
    assert np.all(drawn[r:] < 1e-5 * drawn[0])  # a rank-r update: r non-zero values
    assert np.allclose(full_line.get_ydata(), torch.linalg.svdvals(full.double()).numpy())
    assert ax.get_yscale() == "log" and ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    plt.close(fig)


def test_the_spectrum_keeps_one_y_range_for_every_rank(updates):
    ranges = []
    for r in updates:
        fig, ax = plt.subplots()
        draw_lora_spectrum(ax, updates, r, "blocks.0.attn.q")
        ranges.append(ax.get_ylim())
        plt.close(fig)
    assert len(set(ranges)) == 1


def test_a_rank_or_matrix_without_data_is_one_clear_error(updates):
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="no stored adapter of rank 3.*ranks \\[1, 8, 64\\]"):
        draw_lora_spectrum(ax, updates, 3, "blocks.0.attn.q")
    with pytest.raises(ValueError, match="no adapted matrix 'blocks.0.attn.k'"):
        draw_lora_spectrum(ax, updates, 8, "blocks.0.attn.k")
    plt.close(fig)


@pytest.fixture(scope="module")
def prompt_data():
    embedding, prompts = load_prompts()
    return embedding, prompts, VocabularyPCA(embedding, n_components=2), load_tokenizer()


@pytest.mark.parametrize("k", [5, 20])
def test_the_length_slider_draws_the_prompt_on_the_vocabulary_pca(prompt_data, k):
    embedding, prompts, pca, tokenizer = prompt_data
    fig, ax = plt.subplots()
    points, labels = draw_prompt_map(ax, embedding, prompts, k, tokenizer, pca)
    # the stored prompt, projected by a PCA computed here in numpy (each component's sign is
    # arbitrary, so compare up to it)
    P = load_file(prompt_folder(LIVE_DEMO_DIR, k) / "adapter_model.safetensors")
    [prompt] = P.values()
    E = embedding.double().numpy()
    _, _, Vt = np.linalg.svd(E - E.mean(axis=0), full_matrices=False)
    expected = (prompt.double().numpy() - E.mean(axis=0)) @ Vt[:2].T
    drawn = ax.collections[1].get_offsets()
    assert drawn.shape == (k, 2)
    for c in range(2):
        sign = np.sign(expected[0, c] * drawn[0, c])
        assert np.allclose(drawn[:, c], sign * expected[:, c], atol=1e-4)
    assert np.allclose(points.numpy(), drawn)
    # each label is the token of highest cosine with its vector
    cosine = (prompt.double().numpy() / np.linalg.norm(prompt.double().numpy(), axis=1)[:, None]) \
        @ (E / np.linalg.norm(E, axis=1)[:, None]).T
    assert labels == [tokenizer.token_text(int(i)) for i in cosine.argmax(axis=1)]
    assert [t.get_text() for t in ax.texts] == [repr(label) for label in labels]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    plt.close(fig)


def test_the_prompt_scores_drawn_are_the_prompt_length_studys_seed_0():
    rows = read_results(results_path("prompt_length"))["rows"]
    study = {row["cell"]["num_virtual_tokens"]: row["value"] for row in rows
             if row["seed"] == 0 and row["metric"] == "accuracy"}
    fig, ax = plt.subplots()
    drawn = draw_prompt_scores(ax, read_scores(), 10)
    assert drawn == [study[k] for k in LENGTHS]
    assert list(ax.get_lines()[0].get_ydata()) == drawn
    with pytest.raises(ValueError, match="no stored prompt of length 7"):
        draw_prompt_scores(ax, read_scores(), 7)
    plt.close(fig)


def test_the_stored_models_are_the_studies_cells_at_seed_0():
    """Where a demo model is a cell of a stored study, its scores are that cell's row."""
    scores = read_scores()
    lora_rows = read_results(results_path("rank_weight_type"))["rows"]
    for row in lora_rows:
        cell = row["cell"]
        if row["seed"] == 0 and cell["targets"] == ["q", "v"] and cell["r"] in RANKS \
                and row["metric"] in ("exact_match", "answer_loss"):
            assert scores["lora"][str(cell["r"])][row["metric"]] == row["value"], row
    for row in read_results(results_path("prompt_length"))["rows"]:
        if row["seed"] == 0 and row["metric"] in ("accuracy", "answer_loss"):
            k = row["cell"]["num_virtual_tokens"]
            assert scores["prompt"][str(k)][row["metric"]] == row["value"], row
    assert sorted(map(int, scores["lora"])) == sorted(RANKS)
    assert sorted(map(int, scores["prompt"])) == sorted(LENGTHS)


@pytest.mark.slow
def test_rebuilding_gives_the_same_tensors(tmp_path):
    build_live_demos(tmp_path, ranks=(1,), lengths=(1,), inits=("vocab",))
    for folder, value in ((lora_folder, 1), (prompt_folder, 1), (init_folder, "vocab")):
        rebuilt = load_file(folder(tmp_path, value) / "adapter_model.safetensors")
        stored = load_file(folder(LIVE_DEMO_DIR, value) / "adapter_model.safetensors")
        assert rebuilt.keys() == stored.keys()
        assert all(torch.equal(rebuilt[name], stored[name]) for name in stored)
    # the loss curve notebook 05 draws is the rebuilt run's, step for step
    rebuilt_losses = json.loads((tmp_path / INIT_LOSSES_NAME).read_text())
    stored_losses = json.loads((LIVE_DEMO_DIR / INIT_LOSSES_NAME).read_text())
    assert rebuilt_losses["vocab"] == stored_losses["vocab"]


def test_the_initialisation_demo_loads_every_start_with_its_whole_loss_curve():
    base = load_pretrained("small")
    prompts, losses = load_init_prompts(base)
    assert list(prompts) == list(losses) == ["random", "vocab", "labels"] == list(INIT_LRS)
    for init, prompt in prompts.items():
        stored = load_file(init_folder(LIVE_DEMO_DIR, init) / "adapter_model.safetensors")
        assert torch.equal(prompt.prompt.detach(), stored["prompt"])
        assert prompt.prompt.shape == (10, base.config.d_model)
        assert len(losses[init]) == INIT_STEPS and all(np.isfinite(losses[init]))


def test_an_unknown_start_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        init_config("zeros")
    with pytest.raises(FileNotFoundError, match="python -m minipeft.course.live_demos"):
        load_init_prompts(load_pretrained("small"), tmp_path)
    (tmp_path / INIT_LOSSES_NAME).write_text(json.dumps({"vocab": [1.0]}))
    with pytest.raises(ValueError, match=r"no losses for \['random'\]"):
        load_init_prompts(load_pretrained("small"), tmp_path, inits=("random",))


def test_the_widget_cells_are_live_only():
    """A slider needs a kernel, so its cell is left out of the static deck and its output
    (which carries widget ids) out of nbval's comparison."""
    for name in WIDGET_NOTEBOOKS:
        cells = json.loads((REPO / "notebooks" / name).read_text())["cells"]
        widgets = [c for c in cells if "interact" in "".join(c["source"])
                   and c["cell_type"] == "code"]
        assert widgets, name
        for cell in widgets:
            assert {"live-only", "nbval-ignore-output"} <= set(cell["metadata"].get("tags", []))


def test_every_notebook_presents_with_a_theme_that_fetches_nothing():
    """RISE's default reveal.js theme, `simple`, asks fonts.googleapis.com for its fonts;
    `white` uses the fonts RISE serves itself (the Chromium test below sees no request)."""
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        rise = json.loads(path.read_text())["metadata"].get("rise", {})
        assert rise.get("theme") == "white", f"{path.name}: set metadata.rise.theme = 'white'"


# --- RISE, served and presented offline -----------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyter_server(tmp_path_factory):
    """A Jupyter server (what `jupyter lab` starts) without a token, over a folder holding a
    copy of notebook 12; yields its base URL."""
    root = tmp_path_factory.mktemp("present")
    shutil.copy(REPO / "notebooks" / "12_svd.ipynb", root)
    port = free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".config"),
           "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root",
         f"--port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
         "--ServerApp.password=", f"--ServerApp.root_dir={root}"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/api/status", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, \
                "the Jupyter server did not start"
            time.sleep(0.3)
    yield url
    server.terminate()
    server.wait(timeout=30)


def test_rise_serves_the_slideshow_page_with_local_scripts(jupyter_server):
    import re

    with urllib.request.urlopen(jupyter_server + "/rise/12_svd.ipynb", timeout=30) as reply:
        assert reply.status == 200
        page = reply.read().decode()
    scripts = re.findall(r'<script[^>]*\bsrc="([^"]+)"', page)
    assert scripts and all(src.startswith("/") for src in scripts), scripts
    assert '"notebookPath": "/12_svd.ipynb"' in page  # the page presents that notebook


def test_rise_presents_the_notebook_offline_in_chromium(jupyter_server, tmp_path, monkeypatch):
    test_slides = pytest.importorskip("test_slides")
    if test_slides.CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; "
                    ".ci/run installs it)")
    # the decks' no-network flags, except that this machine's own address still resolves
    flags = [f for f in test_slides.CHROMIUM_FLAGS if not f.startswith("--host-resolver-rules")]
    monkeypatch.setattr(test_slides, "CHROMIUM_FLAGS",
                        flags + ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
    browser = test_slides.DevTools(tmp_path / "chromium-profile")
    try:
        browser.call("Page.navigate", url=jupyter_server + "/rise/12_svd.ipynb")
        browser.wait_for_event("Page.loadEventFired")
        deadline = time.monotonic() + 60
        count = "document.querySelectorAll('.reveal .slides > section').length"
        while not browser.js(count) > 1:
            assert time.monotonic() < deadline, "RISE never built its slides"
            time.sleep(0.5)
        time.sleep(2)  # let late fonts and style sheets ask for what they want
        assert browser.js("document.querySelectorAll('mjx-container').length") > 0  # math
        requests = [e["params"]["request"]["url"] for e in browser.events
                    if e.get("method") == "Network.requestWillBeSent"]
        elsewhere = [u for u in requests
                     if not u.startswith((jupyter_server, "data:", "blob:", "ws://127.0.0.1"))]
        assert requests and elsewhere == []
        errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
        assert errors == []
    finally:
        browser.close()
