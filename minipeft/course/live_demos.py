"""Data and drawings of the notebooks' live demos: sliders an instructor moves during a talk.

Two sliders need one trained model per position, and training during a lecture takes too
long, so the models are trained once, committed under `data/live_demos/`, and only read
and drawn when a slider moves:

* LoRA on `small` at ranks r = 1 … 64, in the setting of the study `rank_weight_type`
  (unscramble, 150 steps, W_q and W_v, α = 2r, seed 0); notebook 12 draws the singular
  values of ΔW = (α/r) B A (Hu et al., 2021, eq. 3) for the rank the slider picks;
* soft prompts on `small` of length k = 1 … 50, in the setting of the study
  `prompt_length` (sentiment, 100 steps, vocabulary start, seed 0); notebook 05 draws the k
  vectors among the words and the prompt's validation accuracy.

Notebook 05 also reads the three prompts of its initialisation demo (k = 10 vectors from a
random, vocabulary or class-label start, 400 steps of 4 sentiment reviews, seed 0) with their
training losses: the same vocabulary-start prompt returns in its domain-shift demo, and
training all three takes longer than the notebook's whole time budget.

Every model is trained by the studies' own `fine_tune` on one torch thread, so rebuilding
gives the same tensors bit for bit (same torch) and the scores equal the studies' stored
rows at seed 0. Rebuild everything with `python -m minipeft.course.live_demos`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from minipeft.analysis import delta_weights, singular_values
from minipeft.course.studies.catalog import LORA_SETTINGS, fine_tune
from minipeft.course.studies.prompt_catalog import PROMPT_SETTINGS, prompt_config
from minipeft.course.studies.results import TIMING_METRICS
from minipeft.course.studies.runner import one_thread
from minipeft.files import atomic_write_text, read_json_object
from minipeft.methods import LoraConfig, learning_rate
from minipeft.methods.base import PeftModel
from minipeft.methods.prompts import PromptTuningConfig
from minipeft.methods.spot import train_prompt
from minipeft.paths import DATA_DIR
from minipeft.pretrained import load_pretrained
from minipeft.prompt_analysis import VocabularyPCA, nearest_token_ids, token_embeddings

LIVE_DEMO_DIR = DATA_DIR / "live_demos"
RANKS = (1, 2, 4, 8, 16, 32, 64)
LENGTHS = (1, 5, 10, 20, 50)
LORA_TARGETS = ["q", "v"]
SEED = 0
SCORES_NAME = "scores.json"
INIT_LOSSES_NAME = "init_losses.json"
# The initialisation demo's recipe. Its lr per start: embedding-sized starts 0.3; the random
# start, uniform in [-0.5, 0.5] and so larger than an embedding, 1.0.
INIT_LRS = {"random": 1.0, "vocab": 0.3, "labels": 0.3}
INIT_LENGTH, INIT_STEPS, INIT_BATCH_SIZE = 10, 400, 4
LABEL_WORDS = [" positive", " negative"]
REBUILD_HINT = "rebuild the demo data with `python -m minipeft.course.live_demos`"


def lora_folder(directory: Path, r: int) -> Path:
    return Path(directory) / f"lora_r{r}"


def prompt_folder(directory: Path, k: int) -> Path:
    return Path(directory) / f"prompt_k{k}"


def init_folder(directory: Path, init: str) -> Path:
    return Path(directory) / f"prompt_init_{init}"


def init_config(init: str) -> PromptTuningConfig:
    """k = 10 vectors from `init`; the class-label start uses the sentiment label words."""
    if init not in INIT_LRS:
        raise ValueError(f"no initialisation demo for init={init!r}; choose one of "
                         f"{sorted(INIT_LRS)}")
    label_words = {"label_words": LABEL_WORDS} if init == "labels" else {}
    return PromptTuningConfig(num_virtual_tokens=INIT_LENGTH, init=init, **label_words)


# --------------------------------------------------------------------------------------
# Building the data (once, not during a lecture)
# --------------------------------------------------------------------------------------
def train_lora(r: int):
    """LoRA of rank r on W_q, W_v, trained as the study `rank_weight_type` trains its cells."""
    setup = {**LORA_SETTINGS, "r": r, "targets": LORA_TARGETS}
    config = LoraConfig(r=r, alpha=setup["alpha_over_r"] * r, target_modules=LORA_TARGETS)
    return fine_tune(setup, SEED, config, setup["lr"])


def train_prompt_of_length(k: int):
    """A soft prompt of k vectors, trained as the study `prompt_length` trains its cells."""
    setup = {**PROMPT_SETTINGS, "num_virtual_tokens": k}
    return fine_tune(setup, SEED, prompt_config(setup), learning_rate("prompt"))


def train_init_prompt(init: str):
    """Notebook 05's initialisation demo for one start: (prompt, TrainResult)."""
    return train_prompt(load_pretrained("small"), "sentiment", init_config(init),
                        steps=INIT_STEPS, lr=INIT_LRS[init], batch_size=INIT_BATCH_SIZE,
                        seed=SEED)


def build_init_prompts(directory: str | Path = LIVE_DEMO_DIR, inits=tuple(INIT_LRS)) -> None:
    """Train and save the initialisation demo's prompts, then their losses in one JSON file."""
    directory = Path(directory)
    losses = {}
    for init in inits:
        with one_thread():  # one thread: the same sums in the same order, the same bits
            prompt, run = train_init_prompt(init)
        prompt.save_pretrained(init_folder(directory, init))
        losses[init] = run.losses
    atomic_write_text(directory / INIT_LOSSES_NAME, json.dumps(losses, indent=1))


def build_live_demos(directory: str | Path = LIVE_DEMO_DIR, ranks=RANKS, lengths=LENGTHS,
                     inits=tuple(INIT_LRS)) -> dict[str, float]:
    """Train and save every demo model; returns the seconds each part took.

    Each model is saved by `save_pretrained` (an atomic folder swap); `scores.json`, the
    validation scores of the slider models without the timings, is written atomically last.
    """
    directory = Path(directory)
    scores = {"lora": {}, "prompt": {}}
    seconds = {}
    for kind, values, train_one, folder in (("lora", ranks, train_lora, lora_folder),
                                            ("prompt", lengths, train_prompt_of_length,
                                             prompt_folder)):
        start = time.perf_counter()
        for value in values:
            with one_thread():  # one thread: the same sums in the same order, the same bits
                model, metrics = train_one(value)
            model.save_pretrained(folder(directory, value))
            scores[kind][str(value)] = {name: number for name, number in metrics.items()
                                        if name not in TIMING_METRICS}
        seconds[kind] = time.perf_counter() - start
    start = time.perf_counter()
    build_init_prompts(directory, inits)
    seconds["init"] = time.perf_counter() - start
    atomic_write_text(directory / SCORES_NAME, json.dumps(scores, indent=1, sort_keys=True))
    return seconds


# --------------------------------------------------------------------------------------
# Reading it back
# --------------------------------------------------------------------------------------
def read_scores(directory: str | Path = LIVE_DEMO_DIR) -> dict:
    return read_json_object(Path(directory) / SCORES_NAME, REBUILD_HINT)


def load_lora_updates(directory: str | Path = LIVE_DEMO_DIR, ranks=RANKS
                      ) -> dict[int, dict[str, torch.Tensor]]:
    """{r: {module name: dense ΔW (d_out, d_in)}} of the stored LoRA adapters, on the CPU."""
    updates = {}
    for r in ranks:
        # LoRA wraps the base's layers, so every adapter needs a base of its own
        model = PeftModel.from_pretrained(load_pretrained("small"), lora_folder(directory, r))
        updates[r] = delta_weights(model)
    return updates


def load_prompts(directory: str | Path = LIVE_DEMO_DIR, lengths=LENGTHS
                 ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """(token embeddings E (V, d) of `small`, {k: the stored prompt P (k, d)})."""
    base = load_pretrained("small")  # a soft prompt leaves its base untouched: one for all
    prompts = {k: PeftModel.from_pretrained(base, prompt_folder(directory, k)).prompt.detach()
               for k in lengths}
    return token_embeddings(base), prompts


def load_init_prompts(base, directory: str | Path = LIVE_DEMO_DIR, inits=tuple(INIT_LRS)
                      ) -> tuple[dict[str, PeftModel], dict[str, list[float]]]:
    """({init: the stored prompt on `base`}, {init: its training loss at every step})."""
    directory = Path(directory)
    path = directory / INIT_LOSSES_NAME
    losses = read_json_object(path, REBUILD_HINT)
    missing = [init for init in inits if init not in losses]
    if missing:
        raise ValueError(f"{path} has no losses for {missing}; {REBUILD_HINT}")
    prompts = {init: PeftModel.from_pretrained(base, init_folder(directory, init))
               for init in inits}
    return prompts, {init: losses[init] for init in inits}


# --------------------------------------------------------------------------------------
# Drawing (what a slider redraws)
# --------------------------------------------------------------------------------------
def spectrum_limits(updates: dict[int, dict[str, torch.Tensor]], name: str) -> tuple[float, float]:
    """One y-range for every rank, so that moving the slider moves the curve, not the axis."""
    top = max(float(singular_values(ranked[name])[0]) for ranked in updates.values())
    return top * 1e-9, top * 2


def draw_lora_spectrum(ax, updates: dict[int, dict[str, torch.Tensor]], r: int, name: str,
                       full_update: torch.Tensor | None = None) -> torch.Tensor:
    """Draw σ₁ ≥ σ₂ ≥ … of the rank-r adapter's ΔW for the module `name` on a log scale.

    A rank-r update has at most r non-zero singular values (its rows are combinations of
    A's r rows), so the curve drops to float rounding after index r, marked by a dotted
    line. `full_update`, if given, is full fine-tuning's W − W₀ of the same matrix, drawn
    for reference. Returns the singular values drawn for the adapter.
    """
    if r not in updates:
        raise ValueError(f"no stored adapter of rank {r}; the demo data has ranks "
                         f"{sorted(updates)}")
    if name not in updates[r]:
        raise ValueError(f"no adapted matrix {name!r}; choose one of {sorted(updates[r])}")
    sigma = singular_values(updates[r][name]).cpu()
    index = range(1, len(sigma) + 1)
    if full_update is not None:
        ax.semilogy(index, singular_values(full_update).cpu(), color="black", lw=1,
                    label="full fine-tuning")
    ax.semilogy(index, sigma, color="tab:orange", marker=".", ms=3, label=f"LoRA r = {r}")
    ax.axvline(r, color="grey", ls=":", label=f"index r = {r}")
    ax.set_ylim(*spectrum_limits(updates, name))
    ax.set(title=f"singular values of ΔW = (α/r) B A, {name}, r = {r}",
           xlabel="index i of the singular value", ylabel="σᵢ (log scale)")
    ax.legend(loc="upper right")
    return sigma


def prompt_map_limits(pca: VocabularyPCA, embedding: torch.Tensor,
                      prompts: dict[int, torch.Tensor]) -> tuple[tuple[float, float], ...]:
    """x and y ranges holding every word and every stored prompt, fixed for the slider."""
    points = torch.cat([pca(embedding), *(pca(p) for p in prompts.values())])
    low, high = points.min(dim=0).values, points.max(dim=0).values
    margin = 0.05 * (high - low)
    return ((float(low[0] - margin[0]), float(high[0] + margin[0])),
            (float(low[1] - margin[1]), float(high[1] + margin[1])))


def draw_prompt_map(ax, embedding: torch.Tensor, prompts: dict[int, torch.Tensor], k: int,
                    tokenizer, pca: VocabularyPCA) -> tuple[torch.Tensor, list[str]]:
    """The k vectors of the length-k prompt among the words, each labelled with its nearest
    token by cosine (Lester et al., 2021, Section 7), on the vocabulary's first two principal
    components. Returns the drawn (k, 2) coordinates and the labels."""
    if k not in prompts:
        raise ValueError(f"no stored prompt of length {k}; the demo data has lengths "
                         f"{sorted(prompts)}")
    words = pca(embedding)
    points = pca(prompts[k])
    labels = [tokenizer.token_text(int(i))
              for i in nearest_token_ids(prompts[k], embedding, k=1)[:, 0]]
    ax.scatter(*words.T, s=3, color="lightgrey", label="token embeddings")
    ax.scatter(*points.T, marker="x", color="crimson", s=40, label=f"the {k} prompt vectors")
    for (x, y), label in zip(points.tolist(), labels):
        ax.annotate(repr(label), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    x_range, y_range = prompt_map_limits(pca, embedding, prompts)
    variance = pca.explained_variance_ratio
    ax.set(xlim=x_range, ylim=y_range, title=f"prompt of k = {k} vectors, nearest token beside each",
           xlabel=f"PC 1 of the token embeddings ({100 * variance[0]:.0f}% of variance)",
           ylabel=f"PC 2 ({100 * variance[1]:.0f}% of variance)")
    ax.legend(loc="lower left", fontsize=8)
    return points, labels


def draw_prompt_scores(ax, scores: dict, k: int) -> list[float]:
    """Validation accuracy of every stored prompt against its length, the length k picked.

    Returns the accuracies drawn, in the order of the lengths."""
    lengths = sorted(int(length) for length in scores["prompt"])
    if k not in lengths:
        raise ValueError(f"no stored prompt of length {k}; the demo data has lengths {lengths}")
    accuracy = [scores["prompt"][str(length)]["accuracy"] for length in lengths]
    ax.plot(lengths, accuracy, "o-", color="tab:blue")
    ax.plot([k], [scores["prompt"][str(k)]["accuracy"]], "o", ms=12, mfc="none", color="crimson",
            label=f"k = {k}: {scores['prompt'][str(k)]['accuracy']:.3f}")
    ax.axhline(0.5, color="grey", ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_xticks(lengths, [str(length) for length in lengths])
    ax.set(ylim=(0.4, 1.0), title="validation accuracy after 100 steps (seed 0)",
           xlabel="prompt length k (vectors)", ylabel="validation accuracy")
    ax.legend(fontsize=8)
    return accuracy


def main() -> None:
    seconds = build_live_demos()
    files = [p for p in LIVE_DEMO_DIR.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"wrote {len(files)} files, {size / 1e6:.2f} MB, to {LIVE_DEMO_DIR}: LoRA "
          f"{seconds['lora']:.0f} s, prompts {seconds['prompt']:.0f} s, initialisation demo "
          f"{seconds['init']:.0f} s")


if __name__ == "__main__":
    main()
