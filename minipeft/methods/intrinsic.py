"""Intrinsic dimension: fine-tune in a random d-dimensional subspace, θ = θ₀ + P φ.

Li, Farkhoor, Liu & Yosinski (2018), "Measuring the Intrinsic Dimension of Objective
Landscapes", and Aghajanyan, Zettlemoyer & Gupta (2021), "Intrinsic Dimensionality Explains
the Effectiveness of Language Model Fine-Tuning"; the "low-rank composition" g = f_{θ + Pφ}
of Pfeiffer, Ruder, Vulić & Ponti (2023), "Modular Deep Learning", Section 3:

    θ^D = θ₀^D + P φ^d        P ∈ R^{D×d} fixed and random, φ ∈ R^d trainable, φ = 0 at start

D is the number of re-parametrised base entries (all of them by default), d the number of
trainable ones: trainable count = d. The smallest d whose fine-tuned metric reaches 90% of
full fine-tuning's is the "d90" of these papers: a measure of how few directions a task needs.

P is never trained or stored: it is regenerated from `seed` when an adapter is loaded, so the
saved adapter is d numbers plus a seed. Two constructions of P:

* "dense": P with i.i.d. N(0, 1) entries, every column scaled to unit length (Li et al.).
  It stores D·d numbers and costs O(D·d) per step, so it is only for small d.
* "fastfood": Li et al.'s structured P. Each block of n = 2^⌈log₂ d⌉ rows is
        V_b = H G_b Π_b H B_b / √(m · n · ‖G_b‖²)              (m = number of blocks)
  with H the n×n Walsh-Hadamard matrix (entries ±1, applied in O(n log n)), B_b a random
  ±1 diagonal, Π_b a random permutation, G_b a Gaussian diagonal. The m = ⌈D/n⌉ blocks
  are stacked and cut to D rows. Every column has unit length; storage is O(D) and a
  product P φ costs O(D log d) instead of O(D·d).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from minipeft.checks import check_choice, check_non_negative_int, check_positive_int
from minipeft.methods.base import PeftConfig, register_method
from minipeft.methods.selective import DeltaModel, candidate_parameters

PROJECTIONS = ("dense", "fastfood")
# Above this many entries (D·d) a dense P costs more than 64 MB: use "fastfood".
MAX_DENSE_ENTRIES = 16 * 2**20


@dataclass
class IntrinsicConfig(PeftConfig):
    """θ = θ₀ + P φ with φ ∈ R^d.

    d: the subspace dimension (the trainable parameter count), 1 ≤ d ≤ D.
    projection: "dense" (small d) or "fastfood" (any d).
    seed: generates P; saving stores the seed, loading regenerates the same P.
    target_modules / layers_to_transform / top_layers: which base entries move (default:
    all, D = model size).
    """

    peft_type: ClassVar[str] = "INTRINSIC"
    d: int = 1000
    projection: str = "fastfood"
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.d, "d (the number of directions φ can move in)")
        check_choice(self.projection, PROJECTIONS, "projection")
        check_non_negative_int(self.seed, "seed")


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Walsh-Hadamard transform H x along the last axis (length 2^k), in O(n log n).

    H_1 = [1], H_2n = [[H_n, H_n], [H_n, −H_n]]: each of the log₂ n rounds pairs entries
    h apart and replaces (a, b) by (a + b, a − b). Unnormalised: H H = n I.
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"the Walsh-Hadamard transform needs a power-of-two length, got {n}")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        pairs = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


class DenseProjection(nn.Module):
    """P φ with a stored random P (D, d) of unit-length columns."""

    def __init__(self, D: int, d: int, generator: torch.Generator):
        super().__init__()
        if D * d > MAX_DENSE_ENTRIES:
            raise ValueError(f"a dense P of {D:,} × {d:,} entries is too large "
                             f"(limit {MAX_DENSE_ENTRIES:,}); use projection='fastfood'")
        P = torch.randn(D, d, generator=generator)
        # persistent=False: P is regenerated from the seed, never saved
        self.register_buffer("P", P / P.norm(dim=0, keepdim=True), persistent=False)

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        return self.P @ phi  # (D, d) @ (d,) → (D,)

    def matrix(self) -> torch.Tensor:
        return self.P


class FastfoodProjection(nn.Module):
    """P φ = the first D entries of [V_1 φ; …; V_m φ], V_b = H G_b Π_b H B_b / scale_b."""

    def __init__(self, D: int, d: int, generator: torch.Generator):
        super().__init__()
        self.D, self.d = D, d
        self.n = 2 ** math.ceil(math.log2(d))  # block width: d padded to a power of two
        m = math.ceil(D / self.n)  # number of stacked blocks
        signs = torch.randint(0, 2, (m, self.n), generator=generator) * 2.0 - 1.0
        perms = torch.stack([torch.randperm(self.n, generator=generator) for _ in range(m)])
        gauss = torch.randn(m, self.n, generator=generator)
        # ‖H G Π H B e_j‖² = n ‖G‖² for every column j, so this gives unit-length columns
        scale = (m * self.n * gauss.pow(2).sum(dim=1, keepdim=True)).sqrt()
        for name, value in (("B", signs), ("Pi", perms), ("G", gauss / scale)):
            self.register_buffer(name, value, persistent=False)  # regenerated from the seed

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        m = self.B.shape[0]
        x = torch.zeros(self.n, dtype=phi.dtype, device=phi.device)
        x[: self.d] = phi  # φ padded to the block width n
        x = self.B * x.expand(m, self.n)  # B_b φ for every block: (m, n)
        x = fwht(x)  # H B_b φ
        x = torch.gather(x, 1, self.Pi)  # Π_b: (Π x)_i = x_{π(i)}
        x = fwht(self.G * x)  # H G_b Π_b H B_b φ / scale_b
        return x.reshape(-1)[: self.D]  # stack the blocks, keep D rows: (D,)

    def matrix(self) -> torch.Tensor:
        """The dense P (D, d), for analysis and tests (P applied to the unit vectors)."""
        return torch.stack([self(e) for e in torch.eye(self.d, device=self.B.device)], dim=1)


@register_method(IntrinsicConfig)
class IntrinsicModel(DeltaModel):
    """θ = θ₀ + P φ for the pool of base tensors; φ (d,) is the only trainable tensor."""

    def inject(self, config: IntrinsicConfig, adapter_name: str) -> None:
        self.pool = candidate_parameters(self.base_model, config.target_modules,
                                         config.layers_to_transform, config.top_layers)
        self.D = sum(p.numel() for p in self.pool.values())
        if config.d > self.D:
            raise ValueError(f"d={config.d} exceeds the {self.D:,} parameters being "
                             "re-parametrised; a subspace must be smaller than the space")
        generator = torch.Generator().manual_seed(config.seed)
        make = DenseProjection if config.projection == "dense" else FastfoodProjection
        self.projection = make(self.D, config.d, generator)
        self.phi = nn.Parameter(torch.zeros(config.d))  # φ = 0: the model starts at θ₀

    def deltas(self) -> dict[str, torch.Tensor]:
        flat = self.projection(self.phi)  # P φ: (D,)
        pieces = flat.split([p.numel() for p in self.pool.values()])
        return {name: piece.view_as(p) for (name, p), piece in zip(self.pool.items(), pieces)}


# --------------------------------------------------------------------------------------
# The d90 of Li et al. and Aghajanyan et al. (the study `intrinsic_dimension` sweeps d)
# --------------------------------------------------------------------------------------
def d90(dims: list[int], scores: list[float], reference: float, fraction: float = 0.9,
        baseline: float = 0.0) -> int | None:
    """The smallest d whose score closes `fraction` of the gap from `baseline` to `reference`.

        d90 = min { d : score_d − baseline ≥ fraction · (reference − baseline) }

    baseline = 0 is the papers' "90% of full fine-tuning's metric". For a loss pass
    negated losses, with the base model's loss as baseline: then d90 is the first d that
    removes 90% of the loss that full fine-tuning removes. None if no d gets there.
    """
    needed = fraction * (reference - baseline)
    reached = [d for d, score in zip(dims, scores) if score - baseline >= needed]
    return min(reached) if reached else None


PRESETS = {
    "intrinsic": lambda: IntrinsicConfig(d=1000, projection="fastfood"),
}
# One d-dimensional vector moves every weight at once; at LoRA's 3e-3 it stays at chance
# (sentiment runs on `small`, 150 steps, batch 16).
LEARNING_RATES = {"intrinsic": 5e-2}

__all__ = ["IntrinsicConfig", "IntrinsicModel", "DenseProjection", "FastfoodProjection",
           "fwht", "d90", "PROJECTIONS", "PRESETS"]
