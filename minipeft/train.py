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

A run can be stopped and continued: with `checkpoint_dir` and `checkpoint_every` the loop
writes φ, the optimizer's moments, the step, the loss curve and every random-number state
(torch, Python, NumPy) to `checkpoint_dir/checkpoint.pt`, atomically. `resume=True` loads
it and replays the batch stream up to that step, so a run killed and resumed ends with the
same bits as one that was never interrupted (same seed, same thread count). A model whose
training state is more than tensors keeps it in `training_state()` /
`load_training_state(state)` (AdaLoRA: whether its rank pattern is frozen).

A loss that is NaN or infinite stops the run at that step with an error: continuing would
only write NaN into φ.

Device and processes: batches go to the device of the model (`model.to("cuda")` is all it
takes), `precision="bf16"` runs the forward pass under autocast (see minipeft.device), and
inside a torch.distributed process group (torchrun) the loop trains with DDP, each rank on
its slice of the global batch (see minipeft.distributed). The loop draws its random numbers
from a private copy of the generators seeded with `seed`: the caller's random state is the
same afterwards as before.
"""
from __future__ import annotations

import contextlib
import io
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from minipeft import distributed
from minipeft.checks import (check_non_negative, check_positive, check_positive_int)
from minipeft.device import autocast, check_precision, model_device
from minipeft.files import atomic_write_bytes
from minipeft.model import IGNORE_INDEX

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1

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


@contextlib.contextmanager
def private_rng(seed: int, device: torch.device):
    """Run the body with torch's CPU generator and `device`'s seeded with `seed`, and give
    the caller back its own torch, Python and NumPy random states afterwards. Only the
    training device's generator is touched: under torchrun each rank keeps to its own GPU.
    (On Apple's MPS the generator is seeded, not forked.)"""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    gpus = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=gpus):
            torch.random.default_generator.manual_seed(seed)
            for gpu in gpus:
                with torch.cuda.device(gpu):
                    torch.cuda.manual_seed(seed)
            if device.type == "mps":
                torch.mps.manual_seed(seed)
            yield
    finally:  # a resumed run restores the checkpoint's Python/NumPy states: undo that too
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   param_groups: list[dict] | None = None,
                   decay_vectors: bool = False) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (or explicit groups, e.g. LoRA+'s two rates).

    Weight decay pulls matrices towards 0; vectors (biases, LayerNorm gains) are left out,
    as in nanoGPT's configure_optimizers: decaying a LayerNorm gain towards 0 shrinks the
    layer's output rather than regularising it. A group that sets its own `weight_decay`
    keeps it. `decay_vectors=True` decays every parameter (the recipe the shipped
    checkpoints were pretrained with).
    """
    if param_groups is None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (requires_grad=True); "
                             "did you freeze everything, or forget get_peft_model()?")
        param_groups = [{"params": params}]
    if not decay_vectors:
        param_groups = [part for group in param_groups for part in split_vectors(group)]
    for group in param_groups:
        group.setdefault("lr", lr)
        group["base_lr"] = group["lr"]  # the schedule scales each group's own rate
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)


def split_vectors(group: dict) -> list[dict]:
    """`group`, or (if it sets no weight_decay) its matrices and its 1-D tensors as two
    groups, the second with weight_decay 0. Empty groups are dropped."""
    if "weight_decay" in group:
        return [group]
    params = list(group["params"])
    matrices = [p for p in params if p.dim() >= 2]
    vectors = [p for p in params if p.dim() < 2]
    parts = [{**group, "params": matrices}] if matrices else []
    if vectors:
        parts.append({**group, "params": vectors, "weight_decay": 0.0})
    return parts


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the run is stopped, nothing is saved."""


def check_trainable(model: nn.Module) -> None:
    """Refuse to train a model whose φ is folded into the base or was unloaded."""
    if getattr(model, "unloaded", False):
        raise RuntimeError("this PeftModel was merged and unloaded; train the GPT that "
                           "merge_and_unload() returned, or load the adapter again")
    if getattr(model, "merged", False):
        raise RuntimeError("the adapter is merged into the base weights, so training φ would "
                           "no longer change the model's outputs; call unmerge() first")


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
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    precision: str = "fp32",
    decay_vectors: bool = False,
) -> TrainResult:
    """Optimise `model` on `steps` batches; evaluate every `eval_every` steps and at the end.

    With `checkpoint_dir` and `checkpoint_every`, the training state is written every
    `checkpoint_every` steps and at the end; `resume=True` continues from it. `batches` must
    be the same deterministic stream as in the first run (it is replayed to the step).
    Batches may live on the CPU: each is moved to the model's device. `precision`: "fp32"
    or "bf16" (autocast). `decay_vectors`: see `make_optimizer`. Under torchrun, every rank
    passes the same global batches; rank 0 alone evaluates, checkpoints and shows progress.
    """
    check_positive_int(steps, "steps")
    check_non_negative(lr, "lr")  # 0 is allowed: a run that only evaluates
    check_non_negative(weight_decay, "weight_decay")
    if grad_clip is not None:
        check_positive(grad_clip, "grad_clip")
    if eval_every is not None:
        check_positive_int(eval_every, "eval_every")
    if warmup is not None:
        check_positive_int(warmup, "warmup")
    if (checkpoint_every is not None or resume) and checkpoint_dir is None:
        raise ValueError("checkpoint_every and resume need checkpoint_dir: the folder that "
                         "holds the checkpoint")
    if checkpoint_every is not None:
        check_positive_int(checkpoint_every, "checkpoint_every")
    check_trainable(model)
    device = model_device(model)
    check_precision(precision, device)
    warmup = max(1, steps // 10) if warmup is None else warmup
    with private_rng(seed, device):  # the caller's generators are given back untouched
        if param_groups is not None:  # lists, so they can be read twice (order and optimizer)
            param_groups = [{**group, "params": list(group["params"])} for group in param_groups]
        # Clipping sums the gradients' norms in the order the tensors were given (the model's,
        # or the caller's groups), not in make_optimizer's matrices-then-vectors regrouping:
        # the last bit of that sum, and so of every run, depends on the order.
        trainable = ([p for p in model.parameters() if p.requires_grad] if param_groups is None
                     else [p for group in param_groups for p in group["params"]])
        optimizer = make_optimizer(model, lr, weight_decay, param_groups, decay_vectors)
        run = {"steps": steps, "lr": lr, "warmup": warmup, "weight_decay": weight_decay,
               "grad_clip": grad_clip, "seed": seed}
        result = TrainResult()
        first_step, elapsed = 0, 0.0
        if resume:
            first_step, elapsed = load_checkpoint(Path(checkpoint_dir), model, optimizer, run,
                                                  result)
            for _ in range(first_step):
                next(batches)  # the stream is deterministic: replay it up to the checkpoint
        several = distributed.world_size() > 1
        forward = distributed.wrap(model, device) if several else model
        main = distributed.is_main_process()
        start = time.perf_counter() - elapsed
        bar = tqdm(range(first_step, steps), desc=desc, disable=not (progress and main),
                   leave=False, initial=first_step, total=steps)
        for step in bar:
            forward.train()  # the model (and its DDP wrapper)
            inputs, targets = next(batches)
            if several:
                inputs, targets, share = distributed_share(inputs, targets)
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast(device, precision):
                loss = forward(inputs, targets).loss
            if several:  # the gradient of the global mean, and the global loss for the curve
                loss = loss * share
                global_loss = distributed.all_reduce_sum(loss) / distributed.world_size()
            else:
                global_loss = loss
            # The one host sync per step: the loss curve and the stop on a non-finite loss
            # need the number on the CPU.
            loss_value = global_loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"the training loss is {loss_value} at step {step + 1}; the run is stopped "
                    f"and nothing was saved. The usual cause is a learning rate too high for "
                    f"this method (lr={lr:g}): try one 3-10x lower")
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
            result.losses.append(loss_value)
            bar.set_postfix(loss=f"{loss_value:.3f}")
            is_last = step == steps - 1
            if main and evaluate is not None and (
                    is_last or (eval_every and (step + 1) % eval_every == 0)):
                model.eval()
                result.evals.append((step + 1, evaluate()))
            if main and checkpoint_every is not None and (
                    is_last or (step + 1) % checkpoint_every == 0):
                save_checkpoint(Path(checkpoint_dir), model, optimizer, run, result, step + 1,
                                time.perf_counter() - start)
        del forward  # DDP's gradient hooks go with the wrapper
        model.eval()
        check_finite_parameters(trainable)
        distributed.check_replicas_agree(trainable)
        result.seconds = time.perf_counter() - start
        return result


def distributed_share(inputs: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This rank's rows of the global batch, and the factor W · n_r / N that turns the mean
    loss over its n_r target tokens into its share of the global mean over N tokens (DDP
    then averages over the W ranks; see minipeft.distributed). Counted before the batch
    moves to the device, so a CPU batch costs no device sync."""
    world = distributed.world_size()
    my_inputs, my_targets = distributed.rows_of_this_rank((inputs, targets))
    counts = (targets != IGNORE_INDEX).reshape(world, -1).sum(dim=1).tolist()  # per rank
    if min(counts) == 0:
        raise ValueError(f"a rank's share of the batch has no target tokens (tokens per rank: "
                         f"{counts}); use a larger --batch-size or fewer processes")
    return my_inputs, my_targets, world * counts[distributed.rank()] / sum(counts)


def check_finite_parameters(params: list[torch.Tensor]) -> None:
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise NonFiniteLossError("a trainable parameter became NaN or infinite (a gradient "
                                 "overflowed); nothing was saved. Try a lower learning rate")


# --------------------------------------------------------------------------------------
# Checkpoints: everything needed to continue a run exactly
# --------------------------------------------------------------------------------------
def training_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """φ (a PEFT model's adapter tensors, or every trainable parameter) and the
    non-persistent buffers that training updates (e.g. AdaLoRA's importance averages)."""
    if hasattr(model, "adapter_state_dict"):
        tensors = {f"phi.{k}": v for k, v in model.adapter_state_dict().items()}
    else:
        tensors = {f"phi.{k}": p for k, p in model.named_parameters() if p.requires_grad}
    for module_name, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            if module._buffers.get(name) is not None:
                key = f"{module_name}.{name}" if module_name else name
                tensors[f"buffer.{key}"] = module._buffers[name]
    return {k: v.detach().cpu().clone() for k, v in tensors.items()}


def restore_training_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("buffer."):
                buffers[key[len("buffer."):]].copy_(value)
    phi = {k[len("phi."):]: v for k, v in tensors.items() if k.startswith("phi.")}
    if hasattr(model, "load_adapter_state_dict"):
        model.load_adapter_state_dict(phi)
    else:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in phi.items():
                params[name].copy_(value)


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": np.random.get_state(legacy=False)}
    states["numpy"]["state"] = {k: torch.from_numpy(np.asarray(v)) if k == "key" else v
                                for k, v in states["numpy"]["state"].items()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    numpy_state = dict(states["numpy"])
    numpy_state["state"] = {k: v.numpy() if k == "key" else v
                            for k, v in numpy_state["state"].items()}
    np.random.set_state(numpy_state)
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    run: dict, result: TrainResult, step: int, elapsed: float) -> Path:
    """Write the state after `step` optimizer steps to directory/checkpoint.pt (atomically)."""
    check_finite_parameters([p for g in optimizer.param_groups for p in g["params"]])
    state = {
        "format": CHECKPOINT_FORMAT, "run": run, "step": step, "elapsed": elapsed,
        "tensors": training_tensors(model), "optimizer": optimizer.state_dict(),
        "rng": rng_states(), "losses": list(result.losses), "evals": list(result.evals),
        "model_state": model.training_state() if hasattr(model, "training_state") else None,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(directory / CHECKPOINT_NAME, buffer.getvalue())


def load_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    run: dict, result: TrainResult) -> tuple[int, float]:
    """Restore a checkpoint into model, optimizer, RNGs and result; returns (step, seconds)."""
    path = directory / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"resume asked for, but {path} does not exist; run without "
                                "resume to start, with checkpoint_every to write checkpoints")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable minipeft checkpoint ({err}); delete it "
                         "and start the run again") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a minipeft training checkpoint of format "
                         f"{CHECKPOINT_FORMAT}; delete it and start the run again")
    changed = {k: (state["run"].get(k), v) for k, v in run.items() if state["run"].get(k) != v}
    if changed:
        raise ValueError(f"{path} was written by a run with other settings (checkpoint vs "
                         f"now: {changed}); resume with the same settings")
    try:
        restore_training_tensors(model, state["tensors"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} does not fit this model ({err}); was it written for "
                         "another method or base size?") from err
    if state["model_state"] is not None:
        model.load_training_state(state["model_state"])
    set_rng_states(state["rng"])
    result.losses[:] = state["losses"]
    result.evals[:] = [tuple(e) for e in state["evals"]]
    return state["step"], state["elapsed"]


# --------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------
def pad_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int,
              device: torch.device | str = "cpu") -> Batch:
    """Right-pad (inputs, targets) pairs; padded targets are ignored by the loss.

    Right padding is safe for a causal model: a real token never attends to later pads.
    Built on the CPU, then copied to `device` in one transfer per tensor.
    """
    width = max(len(x) for x, _ in pairs)
    inputs = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    targets = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for row, (x, y) in enumerate(pairs):
        inputs[row, : len(x)] = torch.tensor(x)
        targets[row, : len(y)] = torch.tensor(y)
    return inputs.to(device), targets.to(device)


def random_batches(pairs: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                   seed: int = 0) -> Iterator[Batch]:
    """Endless batches sampled with replacement from `pairs`, reproducible from `seed`."""
    check_positive_int(batch_size, "batch_size")
    if not pairs:
        raise ValueError("no training examples to draw batches from")
    generator = torch.Generator().manual_seed(seed)
    while True:
        rows = torch.randint(len(pairs), (batch_size,), generator=generator).tolist()
        yield pad_batch([pairs[i] for i in rows], pad_id)


def lm_windows(tokens: torch.Tensor, block_size: int, batch_size: int,
               seed: int = 0) -> Iterator[Batch]:
    """Endless random windows of a token stream for language-model pretraining.

    inputs = tokens[i : i+T], targets = tokens[i+1 : i+T+1]   (next-token prediction)
    """
    check_positive_int(batch_size, "batch_size")
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
    tokens = tokens.to(model_device(model))
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
    check_positive_int(batch_size, "batch_size")
    model.eval()
    device = model_device(model)
    labels = torch.tensor(label_ids, device=device)
    predictions = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i: i + batch_size]
        inputs, _ = pad_batch([(p, []) for p in chunk], pad_id, device)
        logits = model(inputs).logits  # (B, T, V)
        last = torch.tensor([len(p) - 1 for p in chunk], device=device)  # answer positions
        rows = torch.arange(len(chunk), device=device)
        answer_logits = logits[rows, last][:, labels]  # (B, n_labels)
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
    device = model_device(model)
    for length, rows in by_length.items():
        idx = torch.tensor([prompts[i] for i in rows], device=device)
        out = model.generate(idx, max_new_tokens, temperature=0, eos_id=eos_id)[:, length:]
        for row, tokens in zip(rows, out.tolist()):
            answers[row] = tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens
    return answers


def evaluate_task(model: nn.Module, task: str, split: str = "validation",
                  tokenizer=None, limit: int | None = None) -> float:
    """The task's metric (accuracy, exact match, BLEU, ...) of `model` on `split`."""
    from minipeft.tasks import get_task, load_examples, score
    from minipeft.tokenizer import load_tokenizer

    check_limit(limit)
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

    check_limit(limit)
    check_positive_int(batch_size, "batch_size")
    tokenizer = tokenizer or load_tokenizer()
    pairs = [encode_example(ex, tokenizer) for ex in load_examples(task, split)[:limit]]
    model.eval()
    device = model_device(model)
    total = count = 0.0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i: i + batch_size]
        n_targets = sum(t != IGNORE_INDEX for _, y in chunk for t in y)  # answer tokens
        total += model(*pad_batch(chunk, tokenizer.eos_id, device)).loss.item() * n_targets
        count += n_targets
    return total / count


def train(model: nn.Module, task: str, steps: int = 300, lr: float = 1e-3,
          batch_size: int = 16, eval_every: int | None = None, eval_limit: int | None = 200,
          seed: int = 0, tokenizer=None, param_groups: list[dict] | None = None,
          weight_decay: float = 0.0, progress: bool = True,
          checkpoint_dir: str | Path | None = None, checkpoint_every: int | None = None,
          resume: bool = False, precision: str = "fp32",
          examples: list | None = None) -> TrainResult:
    """Fine-tune `model` (a PEFT model or a plain GPT) on a downstream task.

    The loss covers only the answer tokens: the prompt is context, not something to learn.
    Returns the loss curve and the validation metric (every `eval_every` steps and at the end).
    Runs on the model's device; `batch_size` is the global batch under torchrun.
    `checkpoint_dir` / `checkpoint_every` / `resume` / `precision`: see `train_loop`.
    `examples`: train on these examples of the task instead of its whole training split
    (a low-data run); the validation split is the task's either way.
    """
    from minipeft.tasks import encode_example, load_examples
    from minipeft.tokenizer import load_tokenizer

    check_positive_int(batch_size, "batch_size")
    check_limit(eval_limit, "eval_limit")
    tokenizer = tokenizer or load_tokenizer()
    examples = load_examples(task, "train") if examples is None else examples
    pairs = [encode_example(ex, tokenizer) for ex in examples]
    batches = random_batches(pairs, batch_size, tokenizer.eos_id, seed=seed)
    return train_loop(
        model, batches, steps, lr=lr, param_groups=param_groups, weight_decay=weight_decay,
        evaluate=lambda: evaluate_task(model, task, "validation", tokenizer, eval_limit),
        eval_every=eval_every, seed=seed, progress=progress, desc=f"fine-tune {task}",
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
        precision=precision,
    )


def check_limit(limit: int | None, name: str = "limit") -> None:
    """None (every example) or a positive count: -1 would silently drop the last one."""
    if limit is not None:
        check_positive_int(limit, name)
