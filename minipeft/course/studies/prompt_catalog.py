"""The prompt-tuning studies: Lester et al.'s (2021) claims about soft prompts, over seeds.

Every cell trains a soft prompt (or, for reference, the whole model or another input
composition) on sentiment from a pretrained checkpoint, and reports accuracy and answer loss
on the validation split and the trainable count; the cells that go through catalog's
`fine_tune` also the trainable share and the seconds per step.

    study           size               steps  cells  seeds  what varies
    prompt_length   small               100     5     3    num_virtual_tokens 1 … 50
    prompt_init     small               100     4     3    random / vocab / labels / text
    prompt_scale    tiny, small, base   100     6     3    model size × prompt or full FT
    domain_shift    small            10 … 300   4     3    prompt vs full FT, also on the
                                                            shifted split
    prompt_low_data small               100     9     3    prompt / deep prompt / prefix
                                                            × training-set size
    spot_transfer   small              30, 100  6     3    target prompt's start: vocabulary,
                                                            most similar source, mixture

The prompt trains at its preset rate (`learning_rate("prompt")` = 3e-2) with batches of 16,
the recipe of the method_table study; full fine-tuning at `learning_rate("full")`.
"""
from __future__ import annotations

import functools

import torch

from minipeft.course.studies.catalog import fine_tune, training_subset
from minipeft.course.studies.runner import Study
from minipeft.methods import (PRESETS, FullFinetuneConfig, PromptTuningConfig, get_peft_model,
                              learning_rate)
from minipeft.methods.spot import most_similar_source, task_similarity, train_prompt
from minipeft.pretrained import load_pretrained
from minipeft.tasks import encode_example, get_task
from minipeft.tokenizer import load_tokenizer
from minipeft.train import answer_loss, evaluate_task, random_batches, train_loop

TASK = "sentiment"
LABEL_WORDS = [" positive", " negative"]  # the sentiment task's two answers
# A plain description of the task, the "text" start (tokens repeated to fill k vectors).
INIT_TEXT = " is the review positive or negative ?"  # 10 tokens, one per vector
PROMPT_SETTINGS = {"size": "small", "task": TASK, "steps": 100, "batch_size": 16,
                   "eval_limit": 200, "num_virtual_tokens": 10, "init": "vocab"}


def prompt_config(setup: dict) -> PromptTuningConfig:
    """A soft prompt of setup's length and start (Lester et al., 2021, Section 3.2)."""
    init = setup["init"]
    return PromptTuningConfig(num_virtual_tokens=setup["num_virtual_tokens"], init=init,
                              label_words=LABEL_WORDS if init == "labels" else None,
                              init_text=INIT_TEXT if init == "text" else None)


def run_prompt_or_full(setup: dict, seed: int):
    """A soft prompt at the prompt preset's rate, or full fine-tuning at its own; (model,
    metrics)."""
    if setup.get("method", "prompt") == "full":
        return fine_tune(setup, seed, FullFinetuneConfig(), learning_rate("full"))
    return fine_tune(setup, seed, prompt_config(setup), learning_rate("prompt"))


def run_prompt_cell(setup: dict, seed: int) -> dict[str, float]:
    return run_prompt_or_full(setup, seed)[1]


# --------------------------------------------------------------------------------------
# Prompt length (Lester et al., 2021, Section 3.2, Figure 3(a))
# --------------------------------------------------------------------------------------
PROMPT_LENGTH = Study(
    name="prompt_length",
    claim="A longer soft prompt helps up to a point and a few dozen vectors suffice (Lester "
          "et al., 2021, Figure 3(a): gains stop past 20 tokens; lecture 'GenAI with LLMs "
          "(4): Parameter-efficient fine-tuning': 20-100 tokens usually suffice).",
    settings=PROMPT_SETTINGS,
    cells=tuple({"num_virtual_tokens": k} for k in (1, 5, 10, 20, 50)),
    run_cell=run_prompt_cell,
    check_cell={"num_virtual_tokens": 1},
    metric="accuracy",
    seeds=3,
    lecture_numbers={"num_virtual_tokens=20": "20-100 usually suffice",
                     "num_virtual_tokens=50": "20-100 usually suffice"},
)


# --------------------------------------------------------------------------------------
# Prompt initialisation (Lester et al., 2021, Section 3.2, Figure 3(b))
# --------------------------------------------------------------------------------------
PROMPT_INIT = Study(
    name="prompt_init",
    claim="Starting the prompt from class-label embeddings beats sampled vocabulary, which "
          "beats random uniform (Lester et al., 2021, Figure 3(b), mostly in smaller models; "
          "'effect of prompt initialization' in the lecture 'Parameter-efficient "
          "fine-tuning (PEFT)', CS 4804).",
    settings=PROMPT_SETTINGS,
    cells=tuple({"init": init} for init in ("random", "vocab", "labels", "text")),
    run_cell=run_prompt_cell,
    check_cell={"init": "labels"},
    metric="accuracy",
    seeds=3,
    lecture_numbers={"init=random": "worst", "init=vocab": "middle", "init=labels": "best"},
)


# --------------------------------------------------------------------------------------
# Scale: the gap to full fine-tuning closes with model size (Lester et al., 2021, Figure 1)
# --------------------------------------------------------------------------------------
SIZES = ("tiny", "small", "base")
PROMPT_SCALE = Study(
    name="prompt_scale",
    claim="Prompt tuning closes the gap to full fine-tuning as the frozen model grows "
          "(Lester et al., 2021, Figure 1; 'improvement with scale' in the lecture "
          "'Parameter-efficient fine-tuning (PEFT)', CS 4804).",
    settings={key: value for key, value in PROMPT_SETTINGS.items() if key != "size"},
    cells=tuple({"size": size, "method": method} for size in SIZES
                for method in ("prompt", "full")),
    run_cell=run_prompt_cell,
    check_cell={"size": "tiny", "method": "prompt"},
    metric="accuracy",
    seeds=3,
    lecture_numbers={"size=base method=prompt": "gap to full FT closes with size"},
)


# --------------------------------------------------------------------------------------
# Domain shift (Lester et al., 2021, Section 6, Table 2)
# --------------------------------------------------------------------------------------
def run_domain_shift_cell(setup: dict, seed: int) -> dict[str, float]:
    """Trained on sentiment's training reviews; scored on the validation reviews and on the
    shifted ones (the same format and adjectives about other topics), and the drop
    between them."""
    model, metrics = run_prompt_or_full(setup, seed)
    shift_accuracy = evaluate_task(model, TASK, "shift", limit=setup["eval_limit"])
    return {**metrics, "shift_accuracy": shift_accuracy,
            "shift_answer_loss": answer_loss(model, TASK, "shift", limit=setup["eval_limit"]),
            "accuracy_drop": metrics["accuracy"] - shift_accuracy}


# Lester et al., 2021, Table 2 (T5 XXL, accuracy on the eval set, mean ± std over 3 runs),
# as the lecture 'Parameter-efficient fine-tuning (PEFT)', CS 4804 shows it.
DOMAIN_SHIFT_LECTURE = {"method=full steps=100": "QQP→MRPC 73.1±0.9 | MRPC→QQP 74.9±1.3",
                        "method=prompt steps=100": "QQP→MRPC 76.3±0.1 | MRPC→QQP 75.4±0.8"}
DOMAIN_SHIFT = Study(
    name="domain_shift",
    claim="A soft prompt, which leaves the model frozen, transfers to a shifted domain at "
          "least as well as full fine-tuning (Lester et al., 2021, Section 6, Table 2; "
          "'resilience to domain shift' in the lecture 'Parameter-efficient fine-tuning "
          "(PEFT)', CS 4804: model tuning 73.1 vs prompt 76.3 accuracy QQP→MRPC).",
    settings={key: value for key, value in PROMPT_SETTINGS.items() if key != "steps"},
    cells=({"method": "prompt", "steps": 100}, {"method": "prompt", "steps": 300},
           {"method": "full", "steps": 10}, {"method": "full", "steps": 100}),
    run_cell=run_domain_shift_cell,
    check_cell={"method": "full", "steps": 10},
    metric="shift_accuracy",
    seeds=3,
    lecture_numbers=DOMAIN_SHIFT_LECTURE,
)


# --------------------------------------------------------------------------------------
# Deep prompts (P-tuning v2) and prefixes against the input prompt, with little data
# --------------------------------------------------------------------------------------
def run_low_data_cell(setup: dict, seed: int) -> dict[str, float]:
    """A method preset at its own rate, trained for `steps` batches drawn from only
    `train_examples` training reviews."""
    torch.manual_seed(seed)
    method = setup["method"]
    model = get_peft_model(load_pretrained(setup["size"]), PRESETS[method]())
    tokenizer = load_tokenizer()
    pairs = [encode_example(ex, tokenizer) for ex in
             training_subset(TASK, setup["train_examples"], seed, "prompt_low_data")]
    train_loop(model, random_batches(pairs, setup["batch_size"], tokenizer.eos_id, seed),
               setup["steps"], lr=learning_rate(method), seed=seed, progress=False)
    limit = setup["eval_limit"]
    trainable, total = model.count_parameters()
    return {get_task(TASK).metric: evaluate_task(model, TASK, "validation", limit=limit),
            "answer_loss": answer_loss(model, TASK, "validation", limit=limit),
            "trainable": trainable, "trainable_percent": 100 * trainable / total}


PROMPT_LOW_DATA = Study(
    name="prompt_low_data",
    claim="Prompt tuning is less effective than prefix tuning with little data (lecture "
          "'Parameter-Efficient Fine-Tuning (PEFT)', T. Chakraborty; Li & Liang, 2021, "
          "Section 7.1), and prompts at every layer train better than a prompt at the input "
          "only (P-tuning v2, Liu et al., 2022).",
    settings={"size": "small", "steps": 100, "batch_size": 16, "eval_limit": 200},
    cells=tuple({"method": method, "train_examples": n}
                for method in ("prompt", "deep_prompt", "prefix") for n in (16, 64, 2000)),
    run_cell=run_low_data_cell,
    check_cell={"method": "deep_prompt", "train_examples": 16},
    metric="accuracy",
    seeds=3,
    lecture_numbers={"method=deep_prompt train_examples=2000": "> input prompt",
                     "method=prefix train_examples=16": "> input prompt in low data",
                     "method=prefix train_examples=64": "> input prompt in low data"},
)


# --------------------------------------------------------------------------------------
# SPoT: start the target prompt from a source task's prompt (Vu et al., 2022)
# --------------------------------------------------------------------------------------
SPOT_SOURCES = ("paraphrase", "table2text", "unscramble", "arithmetic")
QUERY_SEED_OFFSET = 1000  # the brief query prompt starts from other tokens than the sources


@functools.lru_cache(maxsize=1)
def source_prompts(size: str, steps: int, seed: int) -> dict[str, torch.Tensor]:
    """One prompt per source task and one on their mixture (generic SPoT: each task in
    proportion to its size), trained at `seed` (kept per process: every cell of a seed
    starts from the same library)."""
    base = load_pretrained(size)
    tasks = {name: name for name in SPOT_SOURCES} | {"mixture": list(SPOT_SOURCES)}
    return {name: train_prompt(base, task, steps=steps, lr=learning_rate("prompt"),
                               seed=seed)[0].prompt.detach().clone()
            for name, task in tasks.items()}


def run_spot_cell(setup: dict, seed: int) -> dict[str, float]:
    """Target prompt tuning on sentiment for `steps` steps, from sampled vocabulary (no
    transfer), from the source most similar to a brief query prompt (targeted SPoT,
    Vu et al., 2022, Section 4), or from the mixture's prompt (generic SPoT, Section 3).
    The targeted cell also records the query's similarity to every source."""
    start, base = setup["start"], load_pretrained(setup["size"])
    rate, similarities = learning_rate("prompt"), {}
    if start == "vocab":
        init_from = None
    else:
        sources = source_prompts(setup["size"], setup["source_steps"], seed)
        if start == "mixture":
            init_from = sources["mixture"]
        else:
            query = train_prompt(base, TASK, steps=setup["query_steps"], lr=rate,
                                 seed=seed + QUERY_SEED_OFFSET)[0]
            singles = {name: sources[name] for name in SPOT_SOURCES}
            chosen, _ = most_similar_source(query, singles)
            init_from = singles[chosen]
            similarities = {f"similarity_{name}": task_similarity(query, prompt)
                            for name, prompt in singles.items()}
            similarities["chosen_source"] = SPOT_SOURCES.index(chosen)
    model, _ = train_prompt(base, TASK, steps=setup["steps"], lr=rate, seed=seed,
                            init_from=init_from)
    limit = setup["eval_limit"]
    return {get_task(TASK).metric: evaluate_task(model, TASK, "validation", limit=limit),
            "answer_loss": answer_loss(model, TASK, "validation", limit=limit),
            "trainable": model.count_parameters()[0], **similarities}


SPOT_TRANSFER = Study(
    name="spot_transfer",
    claim="Starting the target prompt from a source task's prompt (SPoT) beats starting "
          "from the vocabulary, and a source chosen by prompt similarity beats a generic "
          "mixture (Vu et al., 2022; lecture 'Parameter-efficient fine-tuning (PEFT)', "
          "CS 4804).",
    settings={"size": "small", "source_steps": 60, "query_steps": 10, "eval_limit": 200},
    cells=tuple({"start": start, "steps": steps} for steps in (30, 100)
                for start in ("vocab", "targeted", "mixture")),
    run_cell=run_spot_cell,
    check_cell={"start": "vocab", "steps": 30},
    metric="accuracy",
    seeds=3,
    lecture_numbers={"start=mixture steps=100": "SPoT > vocabulary start (Vu et al.)",
                     "start=targeted steps=100": "SPoT > vocabulary start (Vu et al.)"},
)


PROMPT_STUDIES = (PROMPT_LENGTH, PROMPT_INIT, PROMPT_SCALE, DOMAIN_SHIFT, PROMPT_LOW_DATA,
                  SPOT_TRANSFER)

__all__ = ["PROMPT_STUDIES", "prompt_config", "run_prompt_cell", "run_domain_shift_cell"]
