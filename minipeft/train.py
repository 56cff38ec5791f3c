"""The one training loop, used for pretraining and for every fine-tuning method.

    θ_{t+1} = AdamW(θ_t, ∇_θ L)   for the *trainable* parameters only
    lr_t    = lr · t / warmup                                  during warm-up
            = lr · ½ (1 + cos(π (t − warmup) / (T − warmup)))  afterwards (cosine decay)

The loop assumes nothing about which parameters train: it optimises exactly those with
`requires_grad=True`, so a PEFT model (frozen base + φ) and a plain GPT go through the same
code. Two optional hooks let a method take part without its own loop:

* `model.regularization_loss()` → a scalar added to the task loss (AdaLoRA's orthogonality
  penalty, MonteCLoRA's KL term);
* `model.after_optimizer_step(step, total_steps)` → called after each update while the
  gradients are still there (AdaLoRA's importance scores and rank budget).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn as nn
from tqdm import tqdm

from minipeft.model import IGNORE_INDEX

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs (B, T), targets (B, T))


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # training loss at every step
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, eval metric)
    seconds: float = 0.0

    @property
    def final_metric(self) -> float | None:
        return self.evals[-1][1] if self.evals else None


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to zero (step counts from 0)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   param_groups: list[dict] | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (or explicit groups, e.g. LoRA+'s two rates)."""
    if param_groups is None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (requires_grad=True); "
                             "did you freeze everything, or forget get_peft_model()?")
        param_groups = [{"params": params}]
    for group in param_groups:
        group.setdefault("lr", lr)
        group["base_lr"] = group["lr"]  # the schedule scales each group's own rate
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)


def train_loop(
    model: nn.Module,
    batches: Iterator[Batch],
    steps: int,
    lr: float = 1e-3,
    warmup: int | None = None,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    param_groups: list[dict] | None = None,
    evaluate: Callable[[], float] | None = None,
    eval_every: int | None = None,
    seed: int = 0,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Optimise `model` on `steps` batches; evaluate every `eval_every` steps and at the end."""
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    set_seed(seed)
    warmup = max(1, steps // 10) if warmup is None else max(1, warmup)
    optimizer = make_optimizer(model, lr, weight_decay, param_groups)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    result = TrainResult()
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        model.train()
        inputs, targets = next(batches)
        loss = model(inputs, targets).loss
        total = loss
        if hasattr(model, "regularization_loss"):
            total = total + model.regularization_loss()
        total.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, group["base_lr"], warmup)
        optimizer.step()
        if hasattr(model, "after_optimizer_step"):
            model.after_optimizer_step(step, steps)
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        is_last = step == steps - 1
        if evaluate is not None and (is_last or (eval_every and (step + 1) % eval_every == 0)):
            model.eval()
            result.evals.append((step + 1, evaluate()))
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------
def pad_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Right-pad (inputs, targets) pairs; padded targets are ignored by the loss.

    Right padding is safe for a causal model: a real token never attends to later pads.
    """
    width = max(len(x) for x, _ in pairs)
    inputs = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    targets = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for row, (x, y) in enumerate(pairs):
        inputs[row, : len(x)] = torch.tensor(x)
        targets[row, : len(y)] = torch.tensor(y)
    return inputs, targets


def random_batches(pairs: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                   seed: int = 0) -> Iterator[Batch]:
    """Endless batches sampled with replacement from `pairs`, reproducible from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        rows = torch.randint(len(pairs), (batch_size,), generator=generator).tolist()
        yield pad_batch([pairs[i] for i in rows], pad_id)


def lm_windows(tokens: torch.Tensor, block_size: int, batch_size: int,
               seed: int = 0) -> Iterator[Batch]:
    """Endless random windows of a token stream for language-model pretraining.

    inputs = tokens[i : i+T], targets = tokens[i+1 : i+T+1]   (next-token prediction)
    """
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(len(tokens) - block_size - 1, (batch_size,), generator=generator)
        inputs = torch.stack([tokens[s: s + block_size] for s in starts.tolist()])
        targets = torch.stack([tokens[s + 1: s + block_size + 1] for s in starts.tolist()])
        yield inputs, targets


@torch.no_grad()
def lm_loss(model: nn.Module, tokens: torch.Tensor, block_size: int,
            max_windows: int = 64) -> float:
    """Mean next-token loss over consecutive non-overlapping windows of `tokens`."""
    model.eval()
    n = min(max_windows, (len(tokens) - 1) // block_size)
    if n == 0:
        raise ValueError(f"need more than {block_size} tokens to evaluate, got {len(tokens)}")
    inputs = tokens[: n * block_size].view(n, block_size)
    targets = tokens[1: n * block_size + 1].view(n, block_size)
    losses = [model(x[None], y[None]).loss.item() for x, y in zip(inputs, targets)]
    return sum(losses) / len(losses)


# --------------------------------------------------------------------------------------
# Downstream tasks: evaluation and fine-tuning
# --------------------------------------------------------------------------------------
@torch.no_grad()
def classify(model: nn.Module, prompts: list[list[int]], label_ids: list[int],
             pad_id: int, batch_size: int = 64) -> list[int]:
    """Index of the most likely label word after each prompt (a "verbalizer" classifier).

    prediction = argmax_c  logit(label_c | prompt)   over the label words only.
    """
    model.eval()
    labels = torch.tensor(label_ids)
    predictions = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i: i + batch_size]
        inputs, _ = pad_batch([(p, []) for p in chunk], pad_id)
        logits = model(inputs).logits  # (B, T, V)
        last = torch.tensor([len(p) - 1 for p in chunk])  # answer position of each row
        answer_logits = logits[torch.arange(len(chunk)), last][:, labels]  # (B, n_labels)
        predictions += answer_logits.argmax(dim=-1).tolist()
    return predictions


@torch.no_grad()
def generate_answers(model: nn.Module, prompts: list[list[int]], max_new_tokens: int,
                     eos_id: int) -> list[list[int]]:
    """Greedy continuations (up to eos) of each prompt; equal-length prompts share a batch."""
    model.eval()
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    answers: list[list[int]] = [[] for _ in prompts]
    for length, rows in by_length.items():
        idx = torch.tensor([prompts[i] for i in rows])
        out = model.generate(idx, max_new_tokens, temperature=0, eos_id=eos_id)[:, length:]
        for row, tokens in zip(rows, out.tolist()):
            answers[row] = tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens
    return answers


def evaluate_task(model: nn.Module, task: str, split: str = "validation",
                  tokenizer=None, limit: int | None = None) -> float:
    """The task's metric (accuracy, exact match, BLEU, ...) of `model` on `split`."""
    from minipeft.tasks import get_task, load_examples, score
    from minipeft.tokenizer import load_tokenizer

    tokenizer = tokenizer or load_tokenizer()
    spec = get_task(task)  # unknown names fail here with the list of tasks
    examples = load_examples(task, split)[:limit]
    prompts = [tokenizer.encode(ex.prompt) for ex in examples]
    references = [ex.answer for ex in examples]
    if spec.label_words:
        label_ids = [tokenizer.encode(w)[0] for w in spec.label_words]
        chosen = classify(model, prompts, label_ids, tokenizer.eos_id)
        predictions = [spec.label_words[c] for c in chosen]
    else:
        longest = max(len(tokenizer.encode(a)) for a in references)
        outputs = generate_answers(model, prompts, longest + 2, tokenizer.eos_id)
        predictions = [tokenizer.decode(o) for o in outputs]
    return score(task, predictions, references)


@torch.no_grad()
def answer_loss(model: nn.Module, task: str, split: str = "validation",
                limit: int | None = None, tokenizer=None, batch_size: int = 50) -> float:
    """Mean cross-entropy of the answer tokens (answer and end-of-text) on a task split.

    The fine-tuning objective on held-out data: still informative when the task metric is
    saturated (every good method reaches accuracy 1.00) or flat (a model that has learned
    to answer with a label word but not yet which one is at chance accuracy, yet its loss
    has fallen from ~10 to the label prior ln 2 / 2).
    """
    from minipeft.tasks import encode_example, load_examples
    from minipeft.tokenizer import load_tokenizer

    tokenizer = tokenizer or load_tokenizer()
    pairs = [encode_example(ex, tokenizer) for ex in load_examples(task, split)[:limit]]
    model.eval()
    total = count = 0.0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i: i + batch_size]
        n_targets = sum(t != IGNORE_INDEX for _, y in chunk for t in y)  # answer tokens
        total += model(*pad_batch(chunk, tokenizer.eos_id)).loss.item() * n_targets
        count += n_targets
    return total / count


def train(model: nn.Module, task: str, steps: int = 300, lr: float = 1e-3,
          batch_size: int = 16, eval_every: int | None = None, eval_limit: int | None = 200,
          seed: int = 0, tokenizer=None, param_groups: list[dict] | None = None,
          weight_decay: float = 0.0, progress: bool = True) -> TrainResult:
    """Fine-tune `model` (a PEFT model or a plain GPT) on a downstream task.

    The loss covers only the answer tokens: the prompt is context, not something to learn.
    Returns the loss curve and the validation metric (every `eval_every` steps and at the end).
    """
    from minipeft.tasks import encode_example, load_examples
    from minipeft.tokenizer import load_tokenizer

    tokenizer = tokenizer or load_tokenizer()
    pairs = [encode_example(ex, tokenizer) for ex in load_examples(task, "train")]
    batches = random_batches(pairs, batch_size, tokenizer.eos_id, seed=seed)
    return train_loop(
        model, batches, steps, lr=lr, param_groups=param_groups, weight_decay=weight_decay,
        evaluate=lambda: evaluate_task(model, task, "validation", tokenizer, eval_limit),
        eval_every=eval_every, seed=seed, progress=progress, desc=f"fine-tune {task}",
    )
