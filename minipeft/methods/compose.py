"""Dynamic LoRA composition: LoraHub (Huang et al., 2023).

Given N LoRA adapters trained on N source tasks (same base, same target modules) and only a
handful of examples of a *new* task, LoraHub trains nothing by gradient. It looks for mixing
weights w ∈ ℝᴺ and uses the composed update

    ΔW(w) = Σᵢ wᵢ ΔWᵢ = Σᵢ wᵢ (αᵢ/rᵢ) Bᵢ Aᵢ          in every target layer

chosen by a gradient-free search on the few-shot loss with an L1 penalty,

    w* = argmin_w  L_few-shot(W₀ + ΔW(w)) + λ Σᵢ |wᵢ|,     wᵢ ∈ [−1.5, 1.5],

(Huang et al., 2023, "LoraHub: Efficient Cross-Task Generalization via Dynamic LoRA
Composition", §3). Only forward passes are needed, so the search is cheap in memory.

Trainable parameters: N (the weights w), none by back-propagation. The composed adapter is
built through `LoraModel.add_weighted_adapter(..., combination="cat")`: the factors are
stacked, so its rank is Σᵢ rᵢ and ΔW(w) is exact.

The search here is a seeded (1+λ) evolution strategy: from the current best w draw λ
Gaussian perturbations of size σ, keep the best if it lowers the objective, and grow σ after
a success and shrink it after a failure (a simple step-size rule).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from minipeft.methods.lora import LoraModel
from minipeft.train import pad_batch

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs (B, T), targets (B, T))
SEARCH_ADAPTER = "lorahub_candidate"  # the scratch adapter each candidate w is built in


@dataclass
class CompositionResult:
    weights: list[float]  # w*, one per source adapter
    loss: float  # few-shot loss of W₀ + ΔW(w*)
    objective: float  # loss + λ Σ|wᵢ|
    adapter_name: str  # the composed adapter, now active in the model
    history: list[dict] = field(default_factory=list)  # per generation: see lorahub_search


def compose(model: LoraModel, adapters: list[str], weights: list[float],
            adapter_name: str = "composed") -> None:
    """Add and activate the adapter with ΔW = Σᵢ wᵢ ΔWᵢ (exact: the factors are stacked)."""
    model.add_weighted_adapter(adapters, weights, adapter_name, combination="cat")
    model.set_adapter(adapter_name)


def as_batch(examples, tokenizer=None) -> Batch:
    """Few-shot examples as one padded (inputs, targets) batch; a batch passes through."""
    if isinstance(examples, tuple):
        return examples
    from minipeft.tasks import encode_example
    from minipeft.tokenizer import load_tokenizer

    tokenizer = tokenizer or load_tokenizer()
    if not examples:
        raise ValueError("LoraHub needs at least one few-shot example of the new task")
    return pad_batch([encode_example(ex, tokenizer) for ex in examples], tokenizer.eos_id)


@torch.no_grad()
def few_shot_loss(model: LoraModel, batch: Batch) -> float:
    """Mean cross-entropy of the model's answer tokens on the few-shot batch."""
    model.eval()
    inputs, targets = batch
    return model(inputs, targets).loss.item()


def candidate_loss(model: LoraModel, adapters: list[str], weights: list[float],
                   batch: Batch) -> float:
    """Few-shot loss of W₀ + Σᵢ wᵢ ΔWᵢ, leaving the model's adapters as they were."""
    previous = model.active_adapter
    compose(model, adapters, weights, SEARCH_ADAPTER)
    try:
        return few_shot_loss(model, batch)
    finally:
        model.set_adapter(previous)
        model.delete_adapter(SEARCH_ADAPTER)


def lorahub_search(model: LoraModel, adapters: list[str], examples, *,
                   adapter_name: str = "composed", generations: int = 20,
                   population: int = 6, sigma: float = 0.5, l1: float = 0.05,
                   bound: float = 1.5, init: list[float] | None = None, seed: int = 0,
                   tokenizer=None) -> CompositionResult:
    """Learn mixing weights w for `adapters` on a few examples; add the composed adapter.

    examples: a list of `tasks.Example` (encoded with the tokenizer) or an (inputs, targets)
    batch. The search starts from `init` (default: uniform, wᵢ = 1/N) and runs `generations`
    rounds of `population` candidates each; weights stay in [−bound, bound].

    history[g] = {"generation", "evaluations", "sigma", "weights", "loss", "objective"} of the
    best w after generation g (g = 0 is the start), for plotting the search.
    """
    if len(adapters) < 2:
        raise ValueError(f"composition needs at least two source adapters, got {adapters}")
    if generations < 0 or population < 1 or sigma <= 0 or l1 < 0 or bound <= 0:
        raise ValueError("need generations ≥ 0, population ≥ 1, sigma > 0, l1 ≥ 0, bound > 0")
    n = len(adapters)
    w = torch.full((n,), 1.0 / n, dtype=torch.float64) if init is None else \
        torch.tensor(init, dtype=torch.float64)
    if w.shape != (n,):
        raise ValueError(f"init needs one weight per adapter ({n}), got {init}")
    batch = as_batch(examples, tokenizer)
    generator = torch.Generator().manual_seed(seed)

    def objective(weights: torch.Tensor) -> tuple[float, float]:
        loss = candidate_loss(model, adapters, weights.tolist(), batch)
        return loss + l1 * weights.abs().sum().item(), loss  # L + λ Σ|wᵢ|

    best_objective, best_loss = objective(w)
    evaluations = 1
    history = [_record(0, evaluations, sigma, w, best_loss, best_objective)]
    for generation in range(1, generations + 1):
        noise = torch.randn(population, n, generator=generator, dtype=torch.float64)
        candidates = (w + sigma * noise).clamp(-bound, bound)  # (λ, N)
        scored = [objective(c) for c in candidates]
        evaluations += population
        k = min(range(population), key=lambda i: scored[i][0])
        if scored[k][0] < best_objective:
            w, (best_objective, best_loss) = candidates[k], scored[k]
            sigma *= 1.5  # success: take bolder steps
        else:
            sigma *= 0.6  # failure: search closer to the current best
        history.append(_record(generation, evaluations, sigma, w, best_loss, best_objective))

    compose(model, adapters, w.tolist(), adapter_name)
    return CompositionResult(w.tolist(), best_loss, best_objective, adapter_name, history)


def _record(generation, evaluations, sigma, w, loss, objective) -> dict:
    return {"generation": generation, "evaluations": evaluations, "sigma": sigma,
            "weights": w.tolist(), "loss": loss, "objective": objective}
