"""In-context learning (ICL): the frozen model reads k solved examples, then the question.

Brown et al. (2020) showed that a large language model can do a task it was never
fine-tuned on when the prompt holds a few demonstrations ("shots"). A 4-shot example of
their letter-cycling task (Brown et al., 2020, Section 3.9.2), as Tanmoy Chakraborty's
lecture "Parameter-Efficient Fine-Tuning (PEFT)" shows it:

    asinoc=casino
    yfrogg=froggy
    plesim=simple
    iggestb=biggest
    astedro=                ← the model should continue with "roasted"

No weight changes, so no training memory; the price is paid at inference instead: every
prediction re-reads the k shots (k times more prompt tokens), the shots must fit in the
context window (128 tokens here), and the result depends on which shots were drawn and in
which order (Zhao et al., 2021; Lu et al., 2022; listed under "Disadvantages of ICL" in
ATNLP Lecture 8, "Parameter-efficient Finetuning").

Shots are training examples written exactly as in the pretraining corpus (`prompt + answer`,
one per line), drawn at random for each question from a seeded generator. Answers are read
like `train.evaluate_task` does: the most likely label word for classification tasks, and
greedy decoding up to the end of the line for the others.
"""
from __future__ import annotations

import random

import torch.nn as nn

from minipeft.tasks import Example, get_task, load_examples, score
from minipeft.train import classify, generate_answers

SHOT_SEPARATOR = "\n"  # corpus documents put one solved example per line


def shot_text(example: Example) -> str:
    """A solved example as the corpus writes it: 'asinoc=casino', '12 + 35 = 47'."""
    return example.prompt + example.answer


def kshot_prompt(shots: list[Example], query: Example) -> str:
    """k solved examples, one per line, then the unsolved query prompt."""
    return "".join(shot_text(s) + SHOT_SEPARATOR for s in shots) + query.prompt


def build_prompts(task: str, k: int, split: str = "validation", limit: int | None = None,
                  seed: int = 0) -> tuple[list[str], list[Example]]:
    """One k-shot prompt per `split` example, shots drawn from the train split (seeded).

    Every query gets its own k shots, sampled without replacement; the train and evaluation
    splits share no prompt, so a query never appears among its own shots.
    """
    if k < 0:
        raise ValueError(f"k={k}: the number of shots must be 0 or more")
    queries = load_examples(task, split)[:limit]
    pool = load_examples(task, "train")
    rng = random.Random(f"minipeft.icl/{task}/{seed}")
    prompts = [kshot_prompt(rng.sample(pool, k), q) for q in queries]
    return prompts, queries


def first_line(text: str) -> str:
    """The model's answer ends where it starts the next shot."""
    return text.split(SHOT_SEPARATOR, 1)[0]


def context_window(model: nn.Module) -> int:
    """block_size of a GPT or of the GPT inside a PEFT model."""
    config = model.model_config if hasattr(model, "model_config") else model.config
    return config.block_size


def evaluate_icl(model: nn.Module, task: str, k: int, split: str = "validation",
                 limit: int | None = 100, seed: int = 0, tokenizer=None) -> float:
    """The task metric of the frozen `model` prompted with k shots per question."""
    from minipeft.tokenizer import load_tokenizer

    tokenizer = tokenizer or load_tokenizer()
    spec = get_task(task)
    texts, queries = build_prompts(task, k, split, limit, seed)
    prompts = [tokenizer.encode(t) for t in texts]
    references = [q.answer for q in queries]
    window = context_window(model)
    answer_room = 1 if spec.label_words else max(len(tokenizer.encode(a)) for a in references) + 2
    longest = max(len(p) for p in prompts)
    if longest + answer_room > window:
        raise ValueError(f"{k}-shot prompts for {task} reach {longest} tokens and the answer "
                         f"needs {answer_room} more, but the context window is {window}: "
                         "use fewer shots")
    if spec.label_words:
        label_ids = [tokenizer.encode(w)[0] for w in spec.label_words]
        predictions = [spec.label_words[c]
                       for c in classify(model, prompts, label_ids, tokenizer.eos_id)]
    else:
        outputs = generate_answers(model, prompts, answer_room, tokenizer.eos_id)
        predictions = [first_line(tokenizer.decode(o)) for o in outputs]
    return score(task, predictions, references)


def icl_curve(model: nn.Module, task: str, ks: list[int], split: str = "validation",
              limit: int | None = 100, seed: int = 0, tokenizer=None) -> dict[int, float]:
    """{k: metric} for each number of shots in `ks` (the "accuracy vs k" curve)."""
    return {k: evaluate_icl(model, task, k, split, limit, seed, tokenizer) for k in ks}


__all__ = ["kshot_prompt", "build_prompts", "evaluate_icl", "icl_curve", "shot_text",
           "first_line", "SHOT_SEPARATOR"]
