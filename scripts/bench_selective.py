"""Benchmark the selective and intrinsic-dimension presets on one task.

    .venv/bin/python scripts/bench_selective.py                 # small, sentiment
    .venv/bin/python scripts/bench_selective.py --steps 150 --methods bitfit fish

For every method: validation metric after `steps` AdamW steps; validation loss on the
answer tokens before and after (more telling than the metric when the base already solves
the task); trainable count and share of the base; median step time (forward, backward,
AdamW and ID3's hook, no evaluation); and the memory anatomy of one training step on a
batch of the task (`minipeft.analysis.memory_anatomy`). Each method trains at its own rate
(`minipeft.methods.learning_rate`): a method with few trainable entries needs larger steps.
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from minipeft.analysis import memory_anatomy
from minipeft.methods import learning_rate
from minipeft.methods.base import get_peft_model
from minipeft.methods.intrinsic import PRESETS as INTRINSIC_PRESETS
from minipeft.train import answer_loss
from minipeft.methods.selective import PRESETS as SELECTIVE_PRESETS
from minipeft.pretrained import load_pretrained
from minipeft.tasks import chance_baseline, encode_example, load_examples
from minipeft.tokenizer import load_tokenizer
from minipeft.train import evaluate_task, random_batches, train_loop

PRESETS = {**SELECTIVE_PRESETS, **INTRINSIC_PRESETS}


class StepTimer:
    """Wraps a batch iterator: the time between two batch requests is one training step."""

    def __init__(self, batches):
        self.batches, self.last, self.times = batches, None, []

    def __iter__(self):
        return self

    def __next__(self):
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        batch = next(self.batches)
        self.last = time.perf_counter()
        return batch


def run(method: str, size: str, task: str, steps: int, seed: int, eval_limit: int) -> dict:
    tokenizer = load_tokenizer()
    peft = get_peft_model(load_pretrained(size), PRESETS[method]())
    trainable, total = peft.count_parameters()
    pairs = [encode_example(ex, tokenizer) for ex in load_examples(task, "train")]
    loss_before = answer_loss(peft, task, limit=eval_limit, tokenizer=tokenizer)
    anatomy = memory_anatomy(peft, next(random_batches(pairs, 16, tokenizer.eos_id, seed=99)))
    timer = StepTimer(random_batches(pairs, 16, tokenizer.eos_id, seed=seed))
    train_loop(peft, timer, steps, lr=learning_rate(method), seed=seed, progress=False)
    metric = evaluate_task(peft, task, "validation", tokenizer, eval_limit)
    loss_after = answer_loss(peft, task, limit=eval_limit, tokenizer=tokenizer)
    mib = 2**20
    return {
        "method": method, "metric": metric, "val_loss_before": loss_before,
        "val_loss_after": loss_after, "trainable": trainable,
        "percent": 100 * trainable / total, "step_ms": 1000 * statistics.median(timer.times),
        "weights_MiB": anatomy.inference_bytes / mib, "grads_MiB": anatomy.gradient_bytes / mib,
        "adamw_MiB": anatomy.optimizer_bytes / mib,
        "activations_MiB": anatomy.activation_bytes / mib,
        "train_total_MiB": anatomy.training_bytes / mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-limit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.size}, {args.task}, {args.steps} steps, batch 16, {args.threads} thread(s); "
          f"chance = {chance_baseline(args.task):.3f}\n")
    columns = ["method", "metric", "val_loss_before", "val_loss_after", "trainable", "percent",
               "step_ms", "weights_MiB", "grads_MiB", "adamw_MiB", "activations_MiB",
               "train_total_MiB"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for method in args.methods:
        row = run(method, args.size, args.task, args.steps, args.seed, args.eval_limit)
        cells = [f"{row[c]:,}" if isinstance(row[c], int) else
                 f"{row[c]:.3f}" if isinstance(row[c], float) else row[c] for c in columns]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
