"""The studies: each checks one of the lectures' claims on the miniature, over several seeds.

A cell fine-tunes the pretrained `small` checkpoint with the library's own `train` (icl_order
only prompts it) and reports the task metric on the validation split, the answer loss there
(still informative when the metric saturates), the trainable count and share, and the
training seconds per step (the end-of-run evaluation included; never compared, it depends on
the machine).

    study             task        steps  cells  seeds  what varies
    rank_weight_type  unscramble   150     27     3    LoRA rank r × which attention matrices
    attention_vs_mlp  unscramble   150      6     5    attention / MLP / all at equal budget
    bitfit_biases     sentiment    100      4     5    which biases train (and full FT)
    mask_budgets      sentiment     80     20     3    mask selector × budget; Fisher samples
                                                        and labels; FISH at random's rate
    method_table      sentiment,   100     46     3    every method preset
                      unscramble
    forgetting        unscramble  40, 160   8     3    full FT vs LoRA r: task vs pretraining loss
    monteclora_lr     sentiment    100     12     3    LoRA vs MonteCLoRA, lr 1e-4 … 3e-2
    icl_order         unscramble     —      6     5    orders of the same k shots (no training)
    adapters          unscramble   150     23     3    placement × bottleneck; adapter vs full
                                                        FT across rates and training-set sizes
    adalora_dora      unscramble   150      6     3    AdaLoRA vs LoRA; DoRA's ΔM against ΔD
    lorahub           sentiment     50      5     3    LoraHub vs LoRA on 5 or 20 examples
    intrinsic_dimension sentiment   50      6     5    subspace dimension d (and full FT)

Unscramble rather than sentiment for the LoRA studies: on `small`, a short sentiment run ends
either near 1.0 or at chance (60 steps: 0.51, 0.97, 0.49 for r = 1, 8, 64), which hides any
effect of the rank, while unscramble's answer loss falls steadily with the adapter's capacity.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import random

import torch

from minipeft.course.studies.runner import Study
from minipeft.icl import first_line, kshot_prompt
from minipeft.methods import (PRESETS, AdaLoraConfig, AdapterConfig, BitFitConfig,
                              DoraConfig, FullFinetuneConfig, IntrinsicConfig, LoraConfig,
                              MaskConfig, get_peft_model, learning_rate, lorahub_search)
from minipeft.methods.dora import magnitude_direction_change
from minipeft.methods.selective import BIAS_MODULES, DeltaModel
from minipeft.pretrained import load_pretrained
from minipeft.tasks import encode_example, get_task, load_examples, score
from minipeft.tokenizer import load_tokenizer
from minipeft.train import (NonFiniteLossError, answer_loss, evaluate_task,
                            generate_answers, lm_loss, random_batches, train, train_loop)


def training_subset(task: str, n: int, seed: int, study: str) -> list:
    """n training examples of `task`, a different draw at each seed; the draw is named after
    the study, so two studies' subsets are independent and a stored table keeps its own."""
    return random.Random(f"{study}/{n}/{seed}").sample(load_examples(task, "train"), n)


def fine_tune(setup: dict, seed: int, config, lr: float, examples: list | None = None):
    """Train `config` on setup's task from the pretrained checkpoint, on all its training
    examples or only on `examples`; (model, metrics)."""
    torch.manual_seed(seed)  # the seed also fixes φ's random initialisation
    model = get_peft_model(load_pretrained(setup["size"]), config)
    task, steps = setup["task"], setup["steps"]
    result = train(model, task, steps=steps, lr=lr, batch_size=setup["batch_size"],
                   eval_limit=setup["eval_limit"], seed=seed, progress=False,
                   examples=examples)
    trainable, total = model.count_parameters()
    return model, {
        get_task(task).metric: result.final_metric,
        "answer_loss": answer_loss(model, task, "validation", limit=setup["eval_limit"]),
        "trainable": trainable,
        "trainable_percent": 100 * trainable / total,
        "step_seconds": result.seconds / steps,
    }


# --------------------------------------------------------------------------------------
# LoRA: rank × weight type (Hu et al., 2021, Tables 5 and 6), attention vs MLP
# --------------------------------------------------------------------------------------
LORA_SETTINGS = {"size": "small", "task": "unscramble", "steps": 150, "batch_size": 16,
                 "eval_limit": 200, "lr": learning_rate("lora"), "alpha_over_r": 2}


def run_lora_cell(setup: dict, seed: int) -> dict[str, float]:
    """LoRA with rank r on the named matrices; α = 2r keeps the preset's α/r = 2 at every
    rank, so only the rank's capacity changes, not the update's scale."""
    config = LoraConfig(r=setup["r"], alpha=setup["alpha_over_r"] * setup["r"],
                        target_modules=setup["targets"])
    return fine_tune(setup, seed, config, setup["lr"])[1]


RANKS = (1, 2, 4, 8, 64)
WEIGHT_TYPES = (["q"], ["v"], ["q", "k"], ["q", "v"], ["q", "k", "v", "o"])
# Hu et al.'s Table 5 holds the budget fixed: r = 8 on one matrix, 4 on two, 2 on four. Our
# grid already has those cells for q, v, (q, k), (q, v) and all four; k and o alone are added.
EQUAL_BUDGET_EXTRA = ({"r": 8, "targets": ["k"]}, {"r": 8, "targets": ["o"]})
# GPT-3 175B on WikiSQL, validation accuracy % (Hu et al., 2021, Table 6: rank; Table 5:
# weight type at 18M trainable parameters). The lecture "Parameter-efficient fine-tuning
# (PEFT)" (CS 4804) shows Table 6 and the q, v, (q, k), (q, v) and all-four entries of
# Table 5; the k and o entries are from the paper.
WIKISQL_BY_RANK = {"q": (68.8, 69.6, 70.5, 70.4, 70.0), "q,v": (73.4, 73.3, 73.7, 73.8, 73.5),
                   "q,k,v,o": (74.1, 73.7, 74.0, 74.0, 73.9)}
WIKISQL_EQUAL_BUDGET = {"r=8 targets=q": "70.4", "r=8 targets=k": "70.0",
                        "r=8 targets=v": "73.0", "r=8 targets=o": "73.2",
                        "r=4 targets=q,k": "71.4", "r=4 targets=q,v": "73.7",
                        "r=2 targets=q,k,v,o": "73.7"}


def rank_lecture_numbers() -> dict[str, str]:
    numbers = {}
    for targets, accuracies in WIKISQL_BY_RANK.items():
        for r, accuracy in zip(RANKS, accuracies):
            numbers[f"r={r} targets={targets}"] = f"WikiSQL {accuracy}"
    for label, accuracy in WIKISQL_EQUAL_BUDGET.items():
        numbers[label] = (numbers.get(label, "") + f" | equal budget {accuracy}").lstrip(" |")
    return numbers


RANK_WEIGHT_TYPE = Study(
    name="rank_weight_type",
    claim="A small rank suffices and spreading it over several matrices beats a larger rank "
          "on one (Hu et al., 2021, Tables 5-6; lecture 'Parameter-efficient fine-tuning "
          "(PEFT)', CS 4804: WikiSQL 70.4 for W_q at r=8 vs 73.7 for W_q,W_v at r=4).",
    settings=LORA_SETTINGS,
    cells=tuple({"r": r, "targets": targets} for targets in WEIGHT_TYPES for r in RANKS)
    + EQUAL_BUDGET_EXTRA,
    run_cell=run_lora_cell,
    check_cell={"r": 1, "targets": ["q"]},
    metric="exact_match",
    seeds=3,
    lecture_numbers=rank_lecture_numbers(),
)

# Equal trainable budgets on `small` (d = 128, d_ff = 512, 4 blocks): LoRA on a d_in × d_out
# matrix costs r (d_in + d_out) per block, so the four attention matrices cost 1024 r, the
# two MLP matrices 1280 r, all six 2304 r. 46,080 = 1024·45 = 1280·36 = 2304·20 per block
# is the smallest budget all three reach exactly; the small budget (attention r=5, MLP r=4:
# 5,120; all six r=2: 4,608) is equal within 10%.
ATTENTION, MLP, ALL = ["q", "k", "v", "o"], ["fc", "proj"], ["q", "k", "v", "o", "fc", "proj"]
ATTENTION_VS_MLP = Study(
    name="attention_vs_mlp",
    claim="At an equal parameter budget, LoRA on the MLP beats LoRA on attention alone "
          "(Schulman et al., 2025, 'LoRA Without Regret', in the lecture 'Parameter-efficient "
          "fine-tuning (PEFT)', CS 4804).",
    settings=LORA_SETTINGS,
    cells=({"r": 5, "targets": ATTENTION}, {"r": 4, "targets": MLP}, {"r": 2, "targets": ALL},
           {"r": 45, "targets": ATTENTION}, {"r": 36, "targets": MLP},
           {"r": 20, "targets": ALL}),
    run_cell=run_lora_cell,
    check_cell={"r": 5, "targets": ATTENTION},
    metric="exact_match",
    seeds=5,
    lecture_numbers={"r=4 targets=fc,proj": "MLP-only > attention-only",
                     "r=36 targets=fc,proj": "MLP-only > attention-only"},
)


# --------------------------------------------------------------------------------------
# BitFit: which biases matter (Ben Zaken et al., 2022)
# --------------------------------------------------------------------------------------
# b_m2 is the first MLP layer's bias, the one before GELU: `fc` (BitFit paper §2).
BITFIT_SUBSETS = {"all_biases": None, "b_q+b_m2": ["q", "fc"], "b_q": ["q"]}


def run_bitfit_cell(setup: dict, seed: int) -> dict[str, float]:
    """BitFit on a subset of biases, or full fine-tuning; plus, per bias type, the mean
    |Δb| over its entries and blocks after training (the BitFit paper's Figure 1)."""
    if setup["trains"] == "full":
        config, lr = FullFinetuneConfig(), learning_rate("full")
    else:
        config, lr = BitFitConfig(bias_names=BITFIT_SUBSETS[setup["trains"]]), \
            learning_rate("bitfit")
    model, metrics = fine_tune(setup, seed, config, lr)
    return {**metrics, **bias_changes(model.deltas())}


def bias_changes(deltas: dict[str, torch.Tensor]) -> dict[str, float]:
    """{"delta_b_<type>": mean |Δb|} for each block bias type that trained."""
    by_type: dict[str, list[torch.Tensor]] = {}
    for bias_type, module in BIAS_MODULES.items():
        for name, delta in deltas.items():
            if name.startswith("blocks.") and name.endswith(f".{module}.bias"):
                by_type.setdefault(bias_type, []).append(delta.detach().abs().reshape(-1))
    return {f"delta_b_{bias_type}": float(torch.cat(parts).mean())
            for bias_type, parts in by_type.items()}


BITFIT_BIASES = Study(
    name="bitfit_biases",
    claim="Training only the biases comes close to full fine-tuning, and b_q with b_m2 alone "
          "rivals it (Ben Zaken et al., 2022; lecture 'Parameter-Efficient Fine-Tuning "
          "(PEFT)', T. Chakraborty; RoBERTa-base GLUE: full FT 86.4, BitFit 85.2 in the "
          "lecture 'Parameter-efficient fine-tuning (PEFT)', CS 4804).",
    settings={"size": "small", "task": "sentiment", "steps": 100, "batch_size": 16,
              "eval_limit": 200},
    cells=tuple({"trains": name} for name in (*BITFIT_SUBSETS, "full")),
    run_cell=run_bitfit_cell,
    check_cell={"trains": "b_q+b_m2"},
    metric="accuracy",
    seeds=5,
    lecture_numbers={"trains=all_biases": "GLUE 85.2 (RoBERTa-base)",
                     "trains=b_q+b_m2": "rivals full FT (BERT)",
                     "trains=full": "GLUE 86.4 (RoBERTa-base)"},
)


# --------------------------------------------------------------------------------------
# Sparse masks at equal budgets; FISH's Fisher-sample count
# --------------------------------------------------------------------------------------
MASK_SELECTORS = ("fisher", "pafi", "random", "magnitude", "id3")
BUDGETS = (0.001, 0.005, 0.02)
# Each selector fine-tunes at its preset's rate; magnitude pruning, like PaFi and random,
# at 1e-2 (a few entries each carry much of the update); the gold-label Fisher at FISH's.
MASK_RATES = {"fisher": learning_rate("fish"), "fisher_gold": learning_rate("fish"),
              "pafi": learning_rate("pafi"), "random": learning_rate("random_mask"),
              "id3": learning_rate("id3"), "magnitude": 1e-2, "bitfit": learning_rate("bitfit")}
# At 2% FISH (at its 3e-3) scores below the random mask (at 1e-2): the selector or the
# rate? One cell answers it: FISH's mask trained at random's rate. If it then matches the
# random mask, the gap was the rate; if it stays below, it is the selector.
FISH_AT_RANDOM_RATE = {"selector": "fisher", "budget": 0.02, "lr": MASK_RATES["random"]}
# The Fisher's labels: sampled from the model (FISH, Sung et al., 2021, the `fisher` cells)
# or the gold answers (the "empirical Fisher"), at the middle budget.
GOLD_FISHER = {"selector": "fisher_gold", "budget": 0.005}


def run_mask_cell(setup: dict, seed: int) -> dict[str, float]:
    """A sparse mask at a budget (its own randomness seeded by the run's seed), or BitFit,
    whose budget is fixed by the architecture (5,760 biases: 0.54% of `small`); at the
    selector's rate (MASK_RATES) unless the cell names its own `lr`."""
    selector = setup["selector"]
    if selector == "bitfit":
        config = BitFitConfig()
    else:
        config = MaskConfig(selector=selector, budget=setup["budget"], seed=seed,
                            task=setup["task"], n_samples=setup["n_samples"])
    lr = setup["lr"] if "lr" in setup else MASK_RATES[selector]
    return fine_tune(setup, seed, config, lr)[1]


MASK_BUDGETS = Study(
    name="mask_budgets",
    claim="Chosen sparse masks (FISH, PaFi, ID3) beat a random one and BitFit at the same "
          "budget, and match full fine-tuning near 0.15% (lecture 'Parameter-Efficient "
          "Fine-Tuning (PEFT)', T. Chakraborty; Sung et al., 2021; Liao et al., 2023; "
          "Agarwal et al., 2025; magnitude pruning after Han et al., 2015).",
    settings={"size": "small", "task": "sentiment", "steps": 80, "batch_size": 16,
              "eval_limit": 200, "n_samples": 64},
    cells=tuple({"selector": s, "budget": b} for s in MASK_SELECTORS for b in BUDGETS)
    + ({"selector": "bitfit"},
       {"selector": "fisher", "budget": 0.005, "n_samples": 32},
       {"selector": "fisher", "budget": 0.005, "n_samples": 128},
       FISH_AT_RANDOM_RATE, GOLD_FISHER),
    run_cell=run_mask_cell,
    check_cell={"selector": "random", "budget": 0.001},
    metric="accuracy",
    seeds=3,
    lecture_numbers={"selector=fisher budget=0.001": "≈ full FT at 0.15%",
                     "selector=pafi budget=0.001": "≈ full FT at 0.15%",
                     "selector=bitfit": "below PaFi / FISH"},
)


# --------------------------------------------------------------------------------------
# Every preset on a classification and a generation task
# --------------------------------------------------------------------------------------
def run_preset_cell(setup: dict, seed: int) -> dict[str, float]:
    """A method preset at its own learning rate (`learning_rate`); a preset that estimates
    its mask from training data (FISH) does so on the cell's task."""
    config = PRESETS[setup["method"]]()
    if getattr(config, "task", None) is not None:
        config = dataclasses.replace(config, task=setup["task"])
    return fine_tune(setup, seed, config, learning_rate(setup["method"]))[1]


# The lecture's method table (Hu et al., 2021, Tables 2 and 4, in the lecture
# "Parameter-efficient fine-tuning (PEFT)", CS 4804): RoBERTa-base GLUE average and GPT-3
# 175B WikiSQL accuracy, with each method's trainable count.
METHOD_TABLE_LECTURE = {
    "full": "RoBERTa-base 125M 86.4 | GPT-3 175,255.8M 73.8",
    "bitfit": "RoBERTa-base 0.1M 85.2 | GPT-3 14.2M 71.3",
    "lora": "RoBERTa-base 0.3M 87.2 | GPT-3 4.7M 73.4",
    "prompt": "GPT-3 PreEmbed 3.2M 63.1",
    "deep_prompt": "GPT-3 PreLayer 20.2M 70.1",
    "houlsby": "GPT-3 Adapter^H 7.1M 71.9",
}
METHOD_TABLE = Study(
    name="method_table",
    claim="LoRA matches or beats full fine-tuning, adapters, BitFit and prompt tuning with a "
          "fraction of the trainable parameters (Hu et al., 2021, Tables 2 and 4, in the "
          "lecture 'Parameter-efficient fine-tuning (PEFT)', CS 4804).",
    settings={"size": "small", "steps": 100, "batch_size": 16, "eval_limit": 200},
    cells=tuple({"task": task, "method": method} for task in ("sentiment", "unscramble")
                for method in PRESETS),
    run_cell=run_preset_cell,
    check_cell={"task": "unscramble", "method": "lora"},
    metric="accuracy",
    seeds=3,
    lecture_numbers={f"task=sentiment method={method}": number
                     for method, number in METHOD_TABLE_LECTURE.items()},
)


# --------------------------------------------------------------------------------------
# Learning vs forgetting: full fine-tuning and LoRA (Biderman et al., 2024)
# --------------------------------------------------------------------------------------
HELD_OUT_DOCUMENTS = 200  # of the pretraining validation stream, never trained on


@functools.lru_cache(maxsize=1)
def held_out_text() -> torch.Tensor:
    """Token stream of held-out pretraining documents (the checkpoints' validation seed)."""
    from minipeft.pretrained import VALIDATION_SEED, corpus_tokens
    from minipeft.tokenizer import load_tokenizer

    return corpus_tokens(HELD_OUT_DOCUMENTS, VALIDATION_SEED, load_tokenizer())


def run_forgetting_cell(setup: dict, seed: int) -> dict[str, float]:
    """Full fine-tuning, or LoRA of rank r on every matrix (α = 2r), for `steps` steps;
    besides the task, the next-token loss on held-out pretraining text before and after:
    forgetting = after − before."""
    if setup["method"] == "full":
        config, lr = FullFinetuneConfig(), learning_rate("full")
    else:
        config = LoraConfig(r=setup["r"], alpha=2 * setup["r"], target_modules=ALL)
        lr = learning_rate("lora_all")
    block = load_pretrained(setup["size"]).config.block_size
    before = lm_loss(load_pretrained(setup["size"]), held_out_text(), block)
    model, metrics = fine_tune(setup, seed, config, lr)
    after = lm_loss(model, held_out_text(), block)
    return {**metrics, "pretraining_loss": after, "forgetting": after - before}


FORGETTING = Study(
    name="forgetting",
    claim="LoRA learns less and forgets less than full fine-tuning: a smaller gain on the "
          "task, a smaller rise of the loss on pretraining text (Biderman et al., 2024; PEFT "
          "is less prone to catastrophic forgetting, lecture 'GenAI with LLMs (4): "
          "Parameter-efficient fine-tuning').",
    settings={"size": "small", "task": "unscramble", "batch_size": 16, "eval_limit": 200},
    cells=tuple({"method": "full", "steps": steps} for steps in (40, 160))
    + tuple({"method": "lora", "r": r, "steps": steps} for r in (1, 8, 64)
            for steps in (40, 160)),
    run_cell=run_forgetting_cell,
    check_cell={"method": "lora", "r": 1, "steps": 40},
    metric="exact_match",
    seeds=3,
    lecture_numbers={"method=full steps=160": "forgets most",
                     "method=lora r=8 steps=160": "learns less, forgets less"},
)


# --------------------------------------------------------------------------------------
# MonteCLoRA's robustness to the learning rate (Sengupta et al.)
# --------------------------------------------------------------------------------------
def run_lr_cell(setup: dict, seed: int) -> dict[str, float]:
    """A preset at a given learning rate. A run whose loss turns NaN or infinite is recorded
    as diverged = 1 with no other metric (its model has no meaningful metric), so the
    summary shows over how many seeds each mean is taken."""
    try:
        metrics = fine_tune(setup, seed, PRESETS[setup["method"]](), setup["lr"])[1]
    except NonFiniteLossError:
        return {"diverged": 1.0}
    return {**metrics, "diverged": 0.0}


LEARNING_RATE_SWEEP = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
MONTECLORA_LR = Study(
    name="monteclora_lr",
    claim="LoRA is sensitive to the learning rate and MonteCLoRA, its Bayesian version, much "
          "less (Sengupta et al.; lecture 'Parameter-Efficient Fine-Tuning (PEFT)', T. "
          "Chakraborty: RoBERTa-base GLUE average LoRA 83.9, MonteCLoRA 84.4).",
    settings={"size": "small", "task": "sentiment", "steps": 100, "batch_size": 16,
              "eval_limit": 200},
    cells=tuple({"method": method, "lr": lr} for method in ("lora", "monteclora")
                for lr in LEARNING_RATE_SWEEP),
    run_cell=run_lr_cell,
    check_cell={"method": "lora", "lr": 1e-3},
    metric="accuracy",
    seeds=3,
    lecture_numbers={"method=lora lr=0.003": "GLUE 83.9 (RoBERTa-base)",
                     "method=monteclora lr=0.003": "GLUE 84.4 (RoBERTa-base)"},
)


# --------------------------------------------------------------------------------------
# In-context learning: the same shots in another order (Zhao et al., 2021; Lu et al., 2022)
# --------------------------------------------------------------------------------------
def shot_order(k: int, shot_set: int, seed: int) -> tuple[int, ...]:
    """The seed-th of the k! orders of k shots, in a shuffled list: distinct seeds give
    distinct orders (up to k!)."""
    orders = list(itertools.permutations(range(k)))
    random.Random(f"icl_order/orders/{k}/{shot_set}").shuffle(orders)
    return orders[seed]


def run_icl_order_cell(setup: dict, seed: int) -> dict[str, float]:
    """The frozen model, prompted with one fixed set of k shots (the same for every query)
    in the order the seed picks; the metric of its greedy answers. Generation tasks only."""
    task, k = setup["task"], setup["k"]
    tokenizer = load_tokenizer()
    shots = random.Random(f"icl_order/shots/{task}/{setup['shot_set']}").sample(
        load_examples(task, "train"), k)
    ordered = [shots[i] for i in shot_order(k, setup["shot_set"], seed)]
    queries = load_examples(task, "validation")[:setup["eval_limit"]]
    prompts = [tokenizer.encode(kshot_prompt(ordered, q)) for q in queries]
    answer_room = max(len(tokenizer.encode(q.answer)) for q in queries) + 2
    outputs = generate_answers(load_pretrained(setup["size"]), prompts, answer_room,
                               tokenizer.eos_id)
    predictions = [first_line(tokenizer.decode(o)) for o in outputs]
    return {get_task(task).metric: score(task, predictions, [q.answer for q in queries]),
            "prompt_tokens": sum(map(len, prompts)) / len(prompts)}


ICL_ORDER = Study(
    name="icl_order",
    claim="In-context learning depends on the order of the same demonstrations (Zhao et al., "
          "2021; Lu et al., 2022; 'Disadvantages of ICL' in ATNLP Lecture 8, "
          "'Parameter-efficient Finetuning').",
    settings={"size": "small", "task": "unscramble", "eval_limit": 200},
    cells=tuple({"k": 4, "shot_set": i} for i in range(4))
    + tuple({"k": 8, "shot_set": i} for i in range(2)),
    run_cell=run_icl_order_cell,
    check_cell={"k": 4, "shot_set": 0},
    metric="exact_match",
    seeds=5,
    lecture_numbers={"k=4 shot_set=0": "sensitive to order"},
)


# Adapters: placement × bottleneck, and against full fine-tuning across learning rates and
# training-set sizes (Houlsby, Pfeiffer, He et al.; He et al., 2021; Mahabadi et al., 2021)
# --------------------------------------------------------------------------------------
def run_adapter_cell(setup: dict, seed: int) -> dict[str, float]:
    """A bottleneck adapter of width d_model / reduction_factor at a placement (the parallel
    adapter with He et al.'s scale s = 4, as its preset), or full fine-tuning; on every
    training example or on `train_examples` of them. A run whose loss turns NaN or infinite
    is recorded as diverged = 1 with no other metric."""
    if setup["method"] == "full":
        config = FullFinetuneConfig()
    else:
        scale = 4.0 if setup["placement"] == "parallel" else 1.0
        config = AdapterConfig(placement=setup["placement"],
                               reduction_factor=setup["reduction_factor"], scale=scale)
    examples = (training_subset(setup["task"], setup["train_examples"], seed, "adapters")
                if "train_examples" in setup else None)
    try:
        metrics = fine_tune(setup, seed, config, setup["lr"], examples)[1]
    except NonFiniteLossError:
        return {"diverged": 1.0}
    return {**metrics, "diverged": 0.0}


PLACEMENTS = ("houlsby", "pfeiffer", "parallel", "io")
HOULSBY_RATE, FULL_RATE = learning_rate("houlsby"), learning_rate("full")  # 3e-3, 1e-3
# Robustness to the rate (He et al., 2021): each method at its own rate and at about a
# third and three times it. The Houlsby cells sit at 1e-3, 3e-3, 1e-2 (× 1/3, 1, 10/3);
# full fine-tuning at 3e-4, 1e-3, 3e-3 (× 0.3, 1, 3): the same spread on the same 1-3-10
# grid, so the two curves compare rate ratios, not absolute rates.
FULL_RATES = (3e-4, FULL_RATE, 3e-3)
# Sample efficiency (Mahabadi et al., 2021): each method at its own rate trained on n of
# the 2,000 training examples (a seeded draw per seed) for the same 150 steps, so only the
# data changes, not the number of updates; the all-data points are the placement grid's
# Houlsby cell at reduction factor 16 and full fine-tuning at its rate.
TRAIN_SIZES = (16, 64, 256)
HOULSBY_16 = {"placement": "houlsby", "reduction_factor": 16}
ADAPTERS = Study(
    name="adapters",
    claim="Where the adapter sits and how wide its bottleneck is trade trainable parameters "
          "for quality (Houlsby et al., 2019; Pfeiffer et al., 2021; He et al., 2022; "
          "lecture 'Parameter Efficient Fine Tuning: Blazing fast fine-tuning!': Houlsby "
          "adapters, 2 per block, best quality at < 3% of the parameters); adapters are more "
          "robust to the learning rate than full fine-tuning and better with few training "
          "examples ('Benefits of adapters' in ATNLP Lecture 8, 'Parameter-efficient "
          "Finetuning'; He et al., 2021; Han et al., 2021; Mahabadi et al., 2021).",
    settings={"size": "small", "task": "unscramble", "steps": 150, "batch_size": 16,
              "eval_limit": 200, "method": "adapter", "lr": HOULSBY_RATE},
    cells=tuple({"placement": placement, "reduction_factor": factor}
                for placement in PLACEMENTS for factor in (4, 16, 64))
    + tuple({**HOULSBY_16, "lr": lr} for lr in (1e-3, 1e-2))
    + tuple({"method": "full", "lr": lr} for lr in FULL_RATES)
    + tuple({**HOULSBY_16, "train_examples": n} for n in TRAIN_SIZES)
    + tuple({"method": "full", "lr": FULL_RATE, "train_examples": n} for n in TRAIN_SIZES),
    run_cell=run_adapter_cell,
    check_cell={"placement": "pfeiffer", "reduction_factor": 64},
    metric="exact_match",
    seeds=3,
    lecture_numbers={"placement=houlsby reduction_factor=16": "best quality, < 3% params",
                     "placement=houlsby reduction_factor=16 lr=0.01":
                     "more stable across rates than full FT",
                     "placement=houlsby reduction_factor=16 train_examples=16":
                     "more sample efficient than full FT"},
)


# --------------------------------------------------------------------------------------
# AdaLoRA vs LoRA at an equal final budget; DoRA vs LoRA vs full FT: ΔM against ΔD
# --------------------------------------------------------------------------------------
def run_adalora_dora_cell(setup: dict, seed: int) -> dict[str, float]:
    """LoRA (α = 2r), DoRA, AdaLoRA (its preset's α = init_r) or full fine-tuning; plus
    how the W_q and W_v rows moved: mean ΔM, mean ΔD and the correlation of ΔM with ΔD over
    those matrices (Liu et al., 2024, DoRA, Figure 2: full fine-tuning's ΔM and ΔD are
    negatively related, LoRA's positively)."""
    method = setup["method"]
    if method == "full":
        config, lr = FullFinetuneConfig(), learning_rate("full")
    elif method == "adalora":
        config = AdaLoraConfig(init_r=setup["init_r"], target_r=setup["target_r"],
                               alpha=setup["init_r"], target_modules=setup["targets"])
        lr = learning_rate("adalora")
    else:
        make = DoraConfig if method == "dora" else LoraConfig
        config = make(r=setup["r"], alpha=2 * setup["r"], target_modules=setup["targets"])
        lr = learning_rate(method)
    model, metrics = fine_tune(setup, seed, config, lr)
    return {**metrics, **magnitude_direction_summary(query_value_changes(model))}


def query_value_changes(model) -> list[tuple[float, float]]:
    """(ΔM, ΔD) of every W_q and W_v, from W₀ to the fine-tuned W = W₀ + ΔW."""
    if isinstance(model, DeltaModel):  # full fine-tuning: Δ per parameter tensor
        deltas = {name[:-len(".weight")]: delta for name, delta in model.deltas().items()
                  if name.endswith((".attn.q.weight", ".attn.v.weight"))}
    else:
        deltas = {name: layer.delta_weight() for name, layer in model.tuner_layers()
                  if name.endswith((".attn.q", ".attn.v"))}
    return [magnitude_direction_change(w0, w0 + delta) for w0, delta in (
        (model.base_model.get_submodule(name).weight if isinstance(model, DeltaModel)
         else model.base_model.get_submodule(name).base_layer.weight, delta)
        for name, delta in deltas.items())]


def magnitude_direction_summary(changes: list[tuple[float, float]]) -> dict[str, float]:
    delta_m = torch.tensor([m for m, _ in changes], dtype=torch.float64)
    delta_d = torch.tensor([d for _, d in changes], dtype=torch.float64)
    correlation = torch.corrcoef(torch.stack([delta_m, delta_d]))[0, 1]
    return {"mean_delta_m": float(delta_m.mean()), "mean_delta_d": float(delta_d.mean()),
            "delta_m_delta_d_correlation": float(correlation)}


QV = ["q", "v"]
ADALORA_DORA = Study(
    name="adalora_dora",
    claim="AdaLoRA beats LoRA at the same final budget by moving rank where it helps (Zhang "
          "et al., 2023), and DoRA changes magnitude and direction more like full "
          "fine-tuning than LoRA does (Liu et al., 2024); lecture 'Parameter-Efficient "
          "Fine-Tuning (PEFT)', T. Chakraborty: RoBERTa-base GLUE average LoRA 83.9, "
          "AdaLoRA 84.0.",
    settings={"size": "small", "task": "unscramble", "steps": 150, "batch_size": 16,
              "eval_limit": 200},
    cells=({"method": "lora", "r": 4, "targets": ALL},
           {"method": "lora", "r": 12, "targets": ALL},
           {"method": "adalora", "init_r": 12, "target_r": 4, "targets": ALL},
           {"method": "lora", "r": 8, "targets": QV},
           {"method": "dora", "r": 8, "targets": QV},
           {"method": "full"}),
    run_cell=run_adalora_dora_cell,
    check_cell={"method": "lora", "r": 8, "targets": QV},
    metric="exact_match",
    seeds=3,
    lecture_numbers={"method=lora r=4 targets=q,k,v,o,fc,proj": "GLUE 83.9 (RoBERTa-base)",
                     "method=adalora init_r=12 target_r=4 targets=q,k,v,o,fc,proj":
                     "GLUE 84.0 (RoBERTa-base)",
                     "method=dora r=8 targets=q,v": "ΔM-ΔD like full FT (negative)",
                     "method=full": "ΔM-ΔD negative"},
)


# --------------------------------------------------------------------------------------
# LoraHub: compose source-task LoRAs for a new task from a few examples (Huang et al., 2023)
# --------------------------------------------------------------------------------------
SOURCE_TASKS = ("paraphrase", "table2text", "unscramble", "arithmetic")
HUB_LORA = {"r": 8, "alpha": 16, "target_modules": ["q", "v"]}  # the `lora` preset's shape


@functools.lru_cache(maxsize=1)
def source_adapters(size: str, steps: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """φ of one `lora`-preset adapter per source task, trained at `seed` (kept per process:
    every cell of a seed composes the same sources)."""
    adapters = {}
    for task in SOURCE_TASKS:
        torch.manual_seed(seed)
        model = get_peft_model(load_pretrained(size), LoraConfig(**HUB_LORA))
        train(model, task, steps=steps, lr=learning_rate("lora"), eval_limit=1, seed=seed,
              progress=False)
        adapters[task] = {k: v.clone() for k, v in model.adapter_state_dict().items()}
    return adapters


def few_shot_examples(task: str, shots: int, seed: int) -> list:
    return random.Random(f"lorahub/{task}/{seed}").sample(load_examples(task, "train"), shots)


def run_lorahub_cell(setup: dict, seed: int) -> dict[str, float]:
    """On `shots` examples of the new task: the base model untouched, LoraHub's composition
    of the source adapters (N mixing weights found without gradients), or a LoRA trained
    from scratch on the same examples."""
    task, method = setup["task"], setup["method"]
    torch.manual_seed(seed)
    examples = few_shot_examples(task, setup["shots"], seed) if "shots" in setup else []
    if method == "base":
        model, trainable = load_pretrained(setup["size"]), 0
    elif method == "lorahub":
        sources = source_adapters(setup["size"], setup["source_steps"], seed)
        model = get_peft_model(load_pretrained(setup["size"]), LoraConfig(**HUB_LORA),
                               adapter_name=SOURCE_TASKS[0])
        for name in SOURCE_TASKS[1:]:
            model.add_adapter(name, LoraConfig(**HUB_LORA))
        for name, tensors in sources.items():
            model.load_adapter_state_dict(tensors, name)
        lorahub_search(model, list(SOURCE_TASKS), examples, seed=seed)
        trainable = len(SOURCE_TASKS)
    else:
        model = get_peft_model(load_pretrained(setup["size"]), LoraConfig(**HUB_LORA))
        tokenizer = load_tokenizer()
        pairs = [encode_example(ex, tokenizer) for ex in examples]
        train_loop(model, random_batches(pairs, setup["batch_size"], tokenizer.eos_id, seed),
                   setup["steps"], lr=learning_rate("lora"), seed=seed, progress=False)
        trainable = model.count_parameters()[0]
    limit = setup["eval_limit"]
    return {get_task(task).metric: evaluate_task(model, task, "validation", limit=limit),
            "answer_loss": answer_loss(model, task, "validation", limit=limit),
            "trainable": trainable}


LORAHUB = Study(
    name="lorahub",
    claim="Composing LoRAs of other tasks with a few examples of a new task (LoraHub, Huang "
          "et al., 2023) competes with training a LoRA on those examples, with N weights "
          "instead of a whole adapter and no gradients.",
    settings={"size": "small", "task": "sentiment", "source_steps": 150, "steps": 50,
              "batch_size": 16, "eval_limit": 200},
    cells=({"method": "base"},)
    + tuple({"method": method, "shots": shots} for method in ("lorahub", "lora")
            for shots in (5, 20)),
    run_cell=run_lorahub_cell,
    check_cell={"method": "lora", "shots": 5},
    metric="accuracy",
    seeds=3,
)


# --------------------------------------------------------------------------------------
# Intrinsic dimension: fine-tuning in a random d-dimensional subspace (Li et al., 2018;
# Aghajanyan et al., 2021)
# --------------------------------------------------------------------------------------
def run_intrinsic_cell(setup: dict, seed: int) -> dict[str, float]:
    """θ = θ₀ + P φ with a Fastfood P of d columns, drawn from the run's seed (so P, like
    the batch order, changes with the seed), at the subspace rate; or full fine-tuning at
    its own rate, the reference that d90 is measured against."""
    if setup["method"] == "full":
        config, lr = FullFinetuneConfig(), setup["full_lr"]
    else:
        config, lr = IntrinsicConfig(d=setup["d"], projection="fastfood", seed=seed), setup["lr"]
    return fine_tune(setup, seed, config, lr)[1]


SUBSPACE_DIMENSIONS = (100, 300, 1000, 3000, 10000)
INTRINSIC_DIMENSION = Study(
    name="intrinsic_dimension",
    claim="Fine-tuning a pretrained model needs few directions: a random subspace of a few "
          "hundred dimensions reaches 90% of full fine-tuning's metric (Aghajanyan et al., "
          "2021: RoBERTa on MRPC with about 200 trainable parameters; Li et al., 2018; the "
          "low intrinsic dimension in the lecture 'Parameter-efficient fine-tuning (PEFT)', "
          "CS 4804, and the low-rank composition in ATNLP Lecture 8, 'Parameter-efficient "
          "Finetuning').",
    # 50 steps at lr 0.03 for every subspace (a subspace step rebuilds all D weights, so runs
    # stay short), full fine-tuning at 1e-3; 200 validation reviews: one review is 0.5%.
    settings={"size": "small", "task": "sentiment", "steps": 50, "batch_size": 16,
              "eval_limit": 200, "lr": 0.03, "full_lr": 1e-3},
    cells=tuple({"method": "intrinsic", "d": d} for d in SUBSPACE_DIMENSIONS)
    + ({"method": "full"},),
    run_cell=run_intrinsic_cell,
    # not full fine-tuning, the cheapest cell: the check must go through the Fastfood path
    check_cell={"method": "intrinsic", "d": 100},
    metric="accuracy",
    seeds=5,
    lecture_numbers={"method=intrinsic d=300": "d90 ≈ 200 (RoBERTa, MRPC)"},
)


STUDIES: dict[str, Study] = {s.name: s for s in (RANK_WEIGHT_TYPE, ATTENTION_VS_MLP,
                                                 BITFIT_BIASES, MASK_BUDGETS, METHOD_TABLE,
                                                 FORGETTING, MONTECLORA_LR, ICL_ORDER,
                                                 ADAPTERS, ADALORA_DORA, LORAHUB,
                                                 INTRINSIC_DIMENSION)}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; choose from {list(STUDIES)}")
    return STUDIES[name]


__all__ = ["STUDIES", "get_study", "fine_tune", "bias_changes"]
