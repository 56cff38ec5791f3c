"""Sparse masks: which K entries of θ₀ may train, and the scores that choose them.

`MaskModel` (selective.py) trains θ = θ₀ + M ⊙ Δ with a 0/1 mask M of K entries. This file
holds how M is chosen. Every tensor of the pool is flattened and concatenated in a fixed
order (`flat_concat`), so a mask is K "global" indices into that one long vector.

    K = ⌈budget · N_pool⌉                                                    (`mask_size`)

Fixed masks, chosen once before training:

* FISH mask (Sung, Nair & Raffel, 2021, "Training Neural Networks with Fixed Sparse Masks"):
  the K entries of largest diagonal Fisher information, estimated on N training prompts,

      F̂_θ = (1/N) Σ_{i=1..N} ( ∂ log p_θ(y_i | x_i) / ∂θ )²,   y_i ~ p_θ(· | x_i)

  (`compute_fisher`, then `select_largest`). An entry whose change moves the model's
  predictions a lot has a large F̂.
* PaFi (Liao, Meng & Monz, 2023, "Parameter-Efficient Fine-Tuning without Introducing New
  Latency"): the K entries of smallest |θ₀|, no data needed (`select_smallest_magnitude`).
* random: K entries drawn uniformly, seeded (`select_random`): the baseline a selector must
  beat.
* magnitude pruning, the sparse-subnetwork view (Han, Pool, Tran & Dally, 2015, "Learning
  both Weights and Connections for Efficient Neural Networks"; Frankle & Carbin, 2019, "The
  Lottery Ticket Hypothesis"): fine-tune every pool entry densely for a few steps, keep the
  K entries that moved most, then reset to θ₀ and train only those,

      M = top-K of |θ_T − θ₀|,     θ_T = θ₀ after T dense AdamW steps

  (`dense_finetune_change`, then `select_largest_change`).

A growing mask, chosen during training:

* ID3 (Agarwal et al., 2025, "Step-by-Step Unmasking for Parameter-Efficient Fine-tuning of
  Large Language Models"): start empty; after each of the first T optimizer steps, unmask
  the K/T not-yet-chosen entries of largest

      H(θ) = |∇_θ L|² / (|θ| + ε)^exp                                       (`id3_importance`)

  at the current θ = θ₀ + M ⊙ Δ (`ID3Unmasking`). exp = 0 is a one-batch Fisher score; a
  large exp favours small weights, as PaFi does.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from minipeft.device import model_device


def flat_concat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """All tensors as one vector, in dict order: the 'global' index space of the masks."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def mask_size(budget: float, pool_size: int) -> int:
    """K = ⌈budget · N_pool⌉ (at least one entry, at most the pool)."""
    return min(pool_size, max(1, math.ceil(budget * pool_size)))


def count_selected(mask_indices: torch.Tensor) -> int:
    """How many slots of a mask hold an entry (an empty slot holds index -1)."""
    return int((mask_indices >= 0).sum())


# --------------------------------------------------------------------------------------
# Fixed masks: FISH, PaFi, random
# --------------------------------------------------------------------------------------
def select_largest(scores: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Global indices of the k largest scores across all tensors (FISH: Fisher scores)."""
    return torch.topk(flat_concat(scores), k).indices


def select_smallest_magnitude(params: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """PaFi: global indices of the k entries with the smallest |θ| across all tensors."""
    return torch.topk(flat_concat(params).abs(), k, largest=False).indices


def select_random(pool_size: int, k: int, seed: int) -> torch.Tensor:
    """k distinct global indices drawn uniformly, from their own seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(pool_size, generator=generator)[:k]


def select_largest_change(change: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Magnitude pruning: global indices of the k entries of largest |θ_T − θ₀|."""
    return torch.topk(flat_concat(change).abs(), k).indices


def dense_finetune_change(model: nn.Module, parameter_names: list[str], batches, steps: int,
                          lr: float, seed: int) -> dict[str, torch.Tensor]:
    """θ_T − θ₀ for `parameter_names` after `steps` AdamW steps that train only those
    tensors, on a copy of `model` (the model itself is not changed). `batches` is an
    endless stream of (inputs, targets), e.g. `minipeft.train.random_batches`."""
    from minipeft.train import train_loop

    dense = copy.deepcopy(model)
    wanted = set(parameter_names)
    for name, p in dense.named_parameters():
        p.requires_grad_(name in wanted)
    train_loop(dense, batches, steps, lr=lr, seed=seed, progress=False)
    owned, tuned = dict(model.named_parameters()), dict(dense.named_parameters())
    return {name: (tuned[name] - owned[name]).detach() for name in parameter_names}


@torch.no_grad()
def sample_answer(model: nn.Module, prompt_ids: list[int], length: int,
                  generator: torch.Generator) -> list[int]:
    """`length` tokens sampled from the model after the prompt: y ~ p_θ(· | x)."""
    ids = list(prompt_ids)
    device = model_device(model)
    for _ in range(length):
        logits = model(torch.tensor([ids], device=device)).logits[0, -1]  # (V,)
        probabilities = F.softmax(logits.float(), dim=-1).cpu()  # the generator is a CPU one
        ids.append(int(torch.multinomial(probabilities, 1, generator=generator)))
    return ids[len(prompt_ids):]


def compute_fisher(model: nn.Module, examples: list, tokenizer, n_samples: int = 64,
                   labels: str = "model", seed: int = 0,
                   parameter_names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information of `model`'s parameters, estimated on `examples`.

        F̂_θ = (1/N) Σ_{i=1..N} ( ∂ log p_θ(y_i | x_i) / ∂θ )²        (one value per entry)

    x_i is the prompt of example i (examples are reused in order if n_samples exceeds them)
    and log p_θ(y|x) = Σ_t log p_θ(y_t | x, y_<t) over the answer tokens. Each sample gets
    its own backward pass: the mean of squared per-example gradients, not the square of
    the mean gradient.
      labels="model": y_i ~ p_θ(· | x_i) sampled from the model (seeded). This is the Fisher
                      information of the FISH mask paper (Sung et al., 2021).
      labels="gold":  y_i = the example's answer, the "empirical Fisher": cheaper to explain,
                      but it measures the fit to the labels rather than the model's own
                      uncertainty.
    The model is not changed: gradients flow to detached copies that share its storage.
    Returns {parameter name: F̂ of that tensor's shape} for `parameter_names` (default all).
    """
    if labels not in ("model", "gold"):
        raise ValueError(f"labels={labels!r}: use 'model' (y sampled from the model) or "
                         "'gold' (the examples' answers)")
    if n_samples <= 0 or not examples:
        raise ValueError(f"need n_samples > 0 and at least one example (got {n_samples}, "
                         f"{len(examples)} examples)")
    owned = dict(model.named_parameters())
    names = list(owned) if parameter_names is None else parameter_names
    params = {n: owned[n].detach().requires_grad_() for n in names}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    was_training = model.training
    model.eval()
    for i in range(n_samples):
        example = examples[i % len(examples)]
        prompt = tokenizer.encode(example.prompt)
        answer = tokenizer.encode(example.answer)
        y = sample_answer(model, prompt, len(answer), generator) if labels == "model" else answer
        idx = torch.tensor([prompt + y[:-1]], device=device)  # P-1+t predicts y_t
        logits = functional_call(model, params, (idx,)).logits[0, len(prompt) - 1:]  # (|y|, V)
        answer = torch.tensor(y, device=device)[:, None]
        log_p = F.log_softmax(logits.float(), dim=-1).gather(1, answer).sum()
        grads = torch.autograd.grad(log_p, list(params.values()), allow_unused=True)
        for name, g in zip(params, grads):
            if g is not None:
                fisher[name] += g.pow(2)  # (∇θ log p(y_i|x_i))²
    model.train(was_training)
    return {name: f / n_samples for name, f in fisher.items()}


# --------------------------------------------------------------------------------------
# A growing mask: ID3
# --------------------------------------------------------------------------------------
def id3_importance(theta: torch.Tensor, grad: torch.Tensor, exponent: float,
                   eps: float) -> torch.Tensor:
    """ID3's heuristic H(θ) = |∇θ|² / (|θ| + ε)^exp, entrywise.

    exp = 0 gives the one-batch Fisher score |∇θ|²; a large exp favours small weights, as
    PaFi does. ID3 recomputes it at every step from the current θ and gradient.
    """
    return grad.pow(2) / (theta.abs() + eps).pow(exponent)


class ID3Unmasking:
    """ID3's growing mask: gradients for every pool entry, and the step that unmasks.

    H(θ) needs ∂L/∂θ for every entry of the pool, masked or not, but only the K mask values
    are trainable. So while slots are empty, the forward pass adds a probe, a zero vector
    that is a leaf of the graph, to each flattened θ₀: θ₀ + 0 + M ⊙ Δ computes the same
    numbers, and backward fills the probe's .grad with ∂L/∂θ. After optimizer step t the
    mask holds ⌊K (t+1) / T⌋ entries; once all K are chosen the probes are dropped and
    training pays only for the K values.
    """

    def __init__(self, pool: dict[str, nn.Parameter], exponent: float, eps: float,
                 unmask_steps: int | None):
        self.pool = pool  # θ₀ by name, in the order of the global indices
        self.exponent, self.eps = exponent, eps
        self.unmask_steps = unmask_steps  # T; None = the whole training run
        self.probes: dict[str, torch.Tensor] = {}  # name → flat zero leaf receiving ∂L/∂θ

    def probes_for_forward(self, mask_indices: torch.Tensor,
                           training: bool) -> dict[str, torch.Tensor]:
        """The probes to add to θ₀ in this forward pass: one per pool tensor while slots
        are empty in a training pass that will be backpropagated, else none."""
        if (count_selected(mask_indices) == len(mask_indices) or not torch.is_grad_enabled()
                or not training):
            return {}
        return {name: self.probe(name) for name in self.pool}

    def probe(self, name: str) -> torch.Tensor:
        p = self.pool[name]
        if name not in self.probes or self.probes[name].device != p.device:
            self.probes[name] = torch.zeros(p.numel(), device=p.device, requires_grad=True)
        return self.probes[name]

    def probe_tensors(self) -> list[torch.Tensor]:
        """The probes that receive gradients (for memory accounting)."""
        return list(self.probes.values())

    def drop_probes(self) -> None:
        self.probes = {}

    @torch.no_grad()
    def unmask(self, mask_indices: torch.Tensor, mask_values: torch.Tensor, step: int,
               total_steps: int) -> bool:
        """After step t < T, fill the next K/T empty slots of `mask_indices` (in place)
        with the not-yet-chosen entries of largest H(θ). Returns whether the mask grew."""
        if not self.probes:  # no training pass since the last unmasking: no gradient
            return False
        k = len(mask_indices)
        n_selected = count_selected(mask_indices)  # ID3 fills the slots in order
        horizon = self.unmask_steps or total_steps
        target = min(k, k * (step + 1) // horizon)  # ⌊K (t+1) / T⌋ entries after step t
        n_new = target - n_selected
        if n_new > 0:
            grad = torch.cat([self.probes[n].grad if self.probes[n].grad is not None
                              else torch.zeros_like(self.probes[n]) for n in self.pool])
            theta = flat_concat(self.pool).clone()
            chosen = mask_indices[:n_selected]
            theta[chosen] += mask_values[:n_selected]  # current θ = θ₀ + Δ
            score = id3_importance(theta, grad, self.exponent, self.eps)
            score[chosen] = -math.inf  # each entry is unmasked at most once
            mask_indices[n_selected: n_selected + n_new] = torch.topk(score, n_new).indices
        for probe in self.probes.values():
            probe.grad = None
        if count_selected(mask_indices) == k:
            self.drop_probes()  # budget reached: stop paying for dense gradients
        return n_new > 0


__all__ = ["flat_concat", "mask_size", "count_selected", "select_largest",
           "select_smallest_magnitude", "select_random", "select_largest_change",
           "dense_finetune_change", "sample_answer", "compute_fisher",
           "id3_importance", "ID3Unmasking"]
