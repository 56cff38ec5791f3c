"""AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning (Zhang et al., 2023).

LoRA gives every matrix the same rank; AdaLoRA starts every matrix at `init_r` and prunes
the least important directions until the *total* rank meets a budget, so important
matrices keep more (Zhang et al., 2023, §3). The update is written like an SVD:

    W = W₀ + (α/r) · P Λ Q       P ∈ ℝ^{d_out×r}, Λ = diag(λ₁..λ_r), Q ∈ ℝ^{r×d_in}

computed as ((x Qᵀ) ⊙ λ) Pᵀ, never as a dense matrix while training. Triplet i is
G_i = (P_{:,i}, λ_i, Q_{i,:}); pruning it means masking λ_i to zero, which removes a rank
without reshaping any tensor (it returns if the others' scores fall below its own).

Four pieces, each a small function or method below:

* Orthogonality, so P and Q behave like singular vectors (P ᵀP = QQᵀ = I), added to the
  task loss through the `regularization_loss()` hook (Zhang et al. 2023, Eq. 4):
      R(P, Q) = ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F,       loss = C + γ Σ_matrices R
  peft and the authors' code add instead γ · mean of the 2n unsquared norms ‖PᵀP − I‖_F,
  ‖QQᵀ − I‖_F over the n adapted matrices (`orth_reg_form="mean_norm"`). Their ratio is
  2n · mean(‖·‖²_F) / mean(‖·‖_F) ≈ 2n · ‖·‖_F, so one γ means different strengths, most
  of all at the start: on `small` with the "adalora" preset (n = 24 matrices, init_r = 12)
  the paper's penalty is 50× the mean-norm one at initialisation (mean norm 0.99), 2× after
  80 steps of sentiment training at lr 3e-3 (mean norm 0.024).
* Sensitivity of each parameter, smoothed (β₁) and with its uncertainty (β₂):
      I = |θ ⊙ ∇_θ L|,  Ī ← β₁ Ī + (1−β₁) I,  Ū ← β₂ Ū + (1−β₂) |I − Ī|,  s = Ī ⊙ Ū
* Importance of triplet i, combining its singular value and its singular vectors:
      S_i = s(λ_i) + (1/d_out) Σ_j s(P_{j,i}) + (1/d_in) Σ_j s(Q_{i,j})
* A cubic budget b(t) of triplets kept over all matrices (T steps, warm-up t_i, final t_f):
      b(t) = b(0)                                                   t < t_i
           = b(T) + ⌊(b(0) − b(T)) (1 − (t − t_i)/(T − t_i − t_f))³⌋   t_i ≤ t < T − t_f
           = b(T)                                                   otherwise
  with b(0) = init_r · n_matrices and b(T) = target_r · n_matrices. After each optimizer
  step (`after_optimizer_step(step, total_steps)`, every `delta_t` steps) the b(t) triplets
  with the largest S_i over the whole model are kept; in the final phase the pattern is
  frozen and the model fine-tunes with it.

t_i and t_f are given as fractions of the run (`t_init`, `t_final`) rather than in steps as
in the paper, so one config fits runs of any length.

Trainable parameters per target matrix: r (d_in + d_out + 1) with r = init_r (pruned
triplets still occupy memory; the *effective* rank is what `rank_pattern()` reports).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from minipeft.checks import (check_choice, check_fraction, check_non_negative, check_positive,
                             check_positive_int)
from minipeft.methods.base import (PeftConfig, PeftModel, TunerLayer, find_targets,
                                   place_layers, register_method, saved_key)

ALL_LINEARS = ["q", "k", "v", "o", "fc", "proj"]
ORTH_REG_FORMS = ("squared_sum", "mean_norm")


@dataclass
class AdaLoraConfig(PeftConfig):
    """Hyper-parameters of AdaLoRA (defaults close to the paper's GLUE settings).

    init_r / target_r: rank per matrix at the start / on average at the end.
    alpha: scale α/init_r of the update.  dropout: on the adapter's input.
    orth_reg_weight: γ of the orthogonality penalty.
    orth_reg_form: "squared_sum", the paper's Σ_matrices (‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F), or
    "mean_norm", the mean of the unsquared norms as peft and the authors' code compute it.
    beta1, beta2: the two EMA rates.
    t_init, t_final: fractions of the run spent before pruning starts / with a frozen pattern.
    delta_t: prune every delta_t steps during the cubic phase.
    """

    peft_type: ClassVar[str] = "ADALORA"
    target_modules: list[str] | None = field(default_factory=lambda: list(ALL_LINEARS))
    init_r: int = 12
    target_r: int = 4
    alpha: float = 12
    dropout: float = 0.0
    orth_reg_weight: float = 0.1
    orth_reg_form: str = "squared_sum"
    beta1: float = 0.85
    beta2: float = 0.85
    t_init: float = 0.1
    t_final: float = 0.2
    delta_t: int = 1

    def __post_init__(self):
        super().__post_init__()
        for name in ("init_r", "target_r", "delta_t"):
            check_positive_int(getattr(self, name), name)
        if self.target_r > self.init_r:
            raise ValueError(f"target_r={self.target_r} > init_r={self.init_r}: AdaLoRA only "
                             "prunes ranks, so start at least as high as the target "
                             "(e.g. init_r = 1.5 × target_r)")
        check_positive(self.alpha, "alpha")
        check_fraction(self.dropout, "dropout")
        check_non_negative(self.orth_reg_weight, "orth_reg_weight (γ)")
        check_choice(self.orth_reg_form, ORTH_REG_FORMS, "orth_reg_form")
        for name in ("beta1", "beta2"):
            check_fraction(getattr(self, name), name)
        for name in ("t_init", "t_final"):
            check_fraction(getattr(self, name), f"{name} (a fraction of the run)")
        if self.t_init + self.t_final >= 1.0:
            raise ValueError(f"t_init + t_final = {self.t_init + self.t_final} leaves no "
                             "steps for pruning; keep their sum below 1 (paper-like: 0.1, 0.2)")

    @property
    def scaling(self) -> float:
        return self.alpha / self.init_r


PRESETS = {
    "adalora": lambda: AdaLoraConfig(init_r=12, target_r=4, alpha=12,
                                     target_modules=list(ALL_LINEARS)),
}
LEARNING_RATES = {"adalora": 3e-3}  # AdamW rate of each preset: LoRA's


def phase_steps(config: AdaLoraConfig, total_steps: int) -> tuple[int, int]:
    """(t_i, t_f) in steps for a run of `total_steps`."""
    t_i, t_f = round(config.t_init * total_steps), round(config.t_final * total_steps)
    if t_i + t_f >= total_steps:
        raise ValueError(f"a run of {total_steps} steps has no pruning phase with t_init="
                         f"{config.t_init}, t_final={config.t_final} ({t_i} + {t_f} steps); "
                         "train longer or lower t_init/t_final")
    return t_i, t_f


def rank_budget(step: int, total_steps: int, initial: int, target: int,
                t_i: int, t_f: int) -> int:
    """The cubic schedule b(t) of the paper (Eq. 12), in kept triplets over all matrices."""
    if step < t_i:
        return initial
    if step >= total_steps - t_f:
        return target
    progress = (step - t_i) / (total_steps - t_i - t_f)
    return target + math.floor((initial - target) * (1 - progress) ** 3)


# --------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------
class AdaLoraLayer(TunerLayer):
    """Frozen nn.Linear + P (d_out, r), λ (r,), Q (r, d_in) and a keep-mask over the r triplets."""

    def __init__(self, base_layer: nn.Linear, config: AdaLoraConfig):
        super().__init__(base_layer)
        d_out, d_in = base_layer.weight.shape
        r = config.init_r
        # Gaussian with std 1/√d: columns of P and rows of Q have unit length on average,
        # so E[PᵀP] = E[QQᵀ] = I and the penalty starts small. Λ = 0 makes ΔW = 0 at init.
        self.P = nn.Parameter(torch.randn(d_out, r) / math.sqrt(d_out))  # left vectors
        self.lambda_ = nn.Parameter(torch.zeros(r))  # singular values λ
        self.Q = nn.Parameter(torch.randn(r, d_in) / math.sqrt(d_in))  # right vectors
        self.register_buffer("rank_mask", torch.ones(r, dtype=torch.bool))  # kept triplets
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling = config.scaling
        self.beta1, self.beta2 = config.beta1, config.beta2
        # Smoothed sensitivity Ī and uncertainty Ū of every entry of P, λ, Q: buffers that
        # follow .to(device) but are not saved (training state, not part of the adapter).
        for name, p in self.svd_parameters().items():
            self.register_buffer(f"importance_{name}", torch.zeros_like(p), persistent=False)
            self.register_buffer(f"uncertainty_{name}", torch.zeros_like(p), persistent=False)

    def svd_parameters(self) -> dict[str, nn.Parameter]:
        return {"P": self.P, "lambda_": self.lambda_, "Q": self.Q}

    @property
    def rank(self) -> int:
        return int(self.rank_mask.sum())

    def masked_lambda(self) -> torch.Tensor:
        return self.lambda_ * self.rank_mask  # pruned triplets contribute exactly nothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # W₀x + b: (…, d_out)
        if self.disabled or self.merged:
            return result
        down = F.linear(self.dropout(x), self.Q)  # x Qᵀ: (…, r)
        update = F.linear(down * self.masked_lambda(), self.P)  # ((x Qᵀ) ⊙ λ) Pᵀ: (…, d_out)
        return result + self.scaling * update

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) P diag(λ ⊙ mask) Q: (d_out, d_in). Merge and analysis only."""
        return self.scaling * (self.P * self.masked_lambda()) @ self.Q

    def orthogonality_residuals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(PᵀP − I, QQᵀ − I), both (r, r): zero when P and Q are orthonormal."""
        eye = torch.eye(self.P.shape[1], device=self.P.device)
        return self.P.T @ self.P - eye, self.Q @ self.Q.T - eye

    def orthogonality_penalty(self) -> torch.Tensor:
        """R(P, Q) = ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F (Zhang et al. 2023, Eq. 4)."""
        return sum((residual ** 2).sum() for residual in self.orthogonality_residuals())

    @torch.no_grad()
    def update_importance(self) -> None:
        """One step of Ī and Ū from the current gradients (call after backward)."""
        for name, p in self.svd_parameters().items():
            if p.grad is None:
                raise RuntimeError("AdaLoRA's importance needs gradients: call "
                                   "after_optimizer_step() after backward() and before "
                                   "zero_grad()")
            sensitivity = (p * p.grad).abs()  # I = |θ ∇θ L|
            avg = getattr(self, f"importance_{name}")
            avg.mul_(self.beta1).add_((1 - self.beta1) * sensitivity)  # Ī: smoothed I
            spread = getattr(self, f"uncertainty_{name}")
            spread.mul_(self.beta2).add_((1 - self.beta2) * (sensitivity - avg).abs())  # Ū

    @torch.no_grad()
    def triplet_scores(self) -> torch.Tensor:
        """S_i = s(λ_i) + mean_j s(P_{j,i}) + mean_j s(Q_{i,j}), with s = Ī ⊙ Ū: (r,)."""
        s = {n: getattr(self, f"importance_{n}") * getattr(self, f"uncertainty_{n}")
             for n in self.svd_parameters()}
        return s["lambda_"] + s["P"].mean(dim=0) + s["Q"].mean(dim=1)

    @torch.no_grad()
    def apply_mask(self) -> None:
        """λ ← λ ⊙ mask: the paper's pruning operator T, kept after every optimizer step."""
        self.lambda_.mul_(self.rank_mask)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------
@register_method(AdaLoraConfig)
class AdaLoraModel(PeftModel):
    """A frozen GPT whose target Linear layers are AdaLoraLayers sharing one rank budget."""

    def inject(self, config: AdaLoraConfig, adapter_name: str) -> None:
        targets = find_targets(self.base_model, config.target_modules,
                               config.layers_to_transform, config.top_layers)
        place_layers(self.base_model, targets, lambda name, module: AdaLoraLayer(module, config),
                     rank=config.init_r, rank_name="init_r", method="AdaLoRA")
        self.pattern_frozen = False

    def adalora_layers(self) -> list[tuple[str, AdaLoraLayer]]:
        return [(n, m) for n, m in self.tuner_layers() if isinstance(m, AdaLoraLayer)]

    # --- hooks of the training loop ------------------------------------------------
    def training_state(self) -> dict:
        """What a training checkpoint needs beyond tensors (see minipeft.train)."""
        return {"pattern_frozen": self.pattern_frozen}

    def load_training_state(self, state: dict) -> None:
        self.pattern_frozen = bool(state["pattern_frozen"])

    def regularization_loss(self) -> torch.Tensor:
        """γ · penalty, added to the task loss by minipeft.train.

        squared_sum: Σ_matrices R(P, Q) (the paper);  mean_norm: the mean of ‖PᵀP − I‖_F and
        ‖QQᵀ − I‖_F over all adapted matrices (peft's AdaLoraModel.forward).
        """
        layers = [layer for _, layer in self.adalora_layers()]
        if self.config.orth_reg_form == "squared_sum":
            penalty = sum(layer.orthogonality_penalty() for layer in layers)
        else:
            norms = [torch.linalg.matrix_norm(residual) for layer in layers
                     for residual in layer.orthogonality_residuals()]  # Frobenius
            penalty = torch.stack(norms).mean()
        return self.config.orth_reg_weight * penalty

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Update importances, then keep the b(step) most important triplets of the model."""
        t_i, t_f = phase_steps(self.config, total_steps)
        layers = [layer for _, layer in self.adalora_layers()]
        if not self.pattern_frozen:
            for layer in layers:
                layer.update_importance()
            in_final_phase = step >= total_steps - t_f
            if step >= t_i and (in_final_phase or step % self.config.delta_t == 0):
                self.prune_to(self.budget(step, total_steps))
            self.pattern_frozen = in_final_phase
        for layer in layers:
            layer.apply_mask()

    # --- budget ----------------------------------------------------------------------
    def budget(self, step: int, total_steps: int) -> int:
        n = len(self.adalora_layers())
        t_i, t_f = phase_steps(self.config, total_steps)
        return rank_budget(step, total_steps, self.config.init_r * n, self.config.target_r * n,
                           t_i, t_f)

    @torch.no_grad()
    def prune_to(self, budget: int) -> None:
        """Keep the `budget` triplets with the largest scores across all matrices."""
        layers = [layer for _, layer in self.adalora_layers()]
        scores = torch.cat([layer.triplet_scores() for layer in layers])  # (n · r,)
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[torch.topk(scores, budget).indices] = True
        for layer, mask in zip(layers, keep.split([layer.P.shape[1] for layer in layers])):
            layer.rank_mask.copy_(mask)

    def total_rank(self) -> int:
        return sum(layer.rank for _, layer in self.adalora_layers())

    def rank_pattern(self) -> dict[str, int]:
        """Effective rank (kept triplets) of every adapted matrix, by module name."""
        return {name: layer.rank for name, layer in self.adalora_layers()}

    # --- saving ----------------------------------------------------------------------
    def adapter_state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        """P, λ, Q and the keep-masks (a loaded adapter has the same pruned ranks)."""
        tensors = super().adapter_state_dict(adapter_name)
        for name, layer in self.adalora_layers():
            tensors[saved_key(name, "rank_mask")] = layer.rank_mask
        return tensors


__all__ = ["AdaLoraConfig", "AdaLoraLayer", "AdaLoraModel", "rank_budget", "phase_steps",
           "PRESETS"]
