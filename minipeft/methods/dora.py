"""DoRA: Weight-Decomposed Low-Rank Adaptation (Liu et al., 2024).

Split every weight into a magnitude and a direction, train the magnitude directly and
the direction with LoRA (Liu et al., 2024, Section 4.1):

    W' = m · V / ‖V‖_c,      V = W₀ + (α/r) B A,      m initialised to ‖W₀‖_c

so at initialisation (B = 0) W' = ‖W₀‖_c · W₀/‖W₀‖_c = W₀ exactly.

Which axis is ‖·‖_c? The paper writes W ∈ ℝ^{d×k} with one magnitude per *column*
(m ∈ ℝ^{1×k}, k = output features; the norm runs over the d input entries of a column).
PyTorch's nn.Linear stores the transpose, weight ∈ ℝ^{d_out×d_in}, so a paper column is one
of our *rows*: ‖V‖_c here is V.norm(dim=1), one number per output feature (d_out of them),
and m has shape (d_out,). Each output unit's weight vector thus keeps its own length m_i
while LoRA rotates it.

Forward, without ever building W' (the scale multiplies outputs, not weights):

    h = (m / ‖V‖_c) ⊙ (W₀ x + (α/r) B A x) + b          (B A x computed as x Aᵀ Bᵀ)

The d_out norms ‖V‖_c do need the dense V = W₀ + (α/r) B A once per forward: that is
inherent to DoRA and the one place a dense ΔW appears during training.

Gradient through the norm: section 4.3 of the paper treats ‖V‖_c as a constant in the
backward pass ("to save memory": autograd then keeps no graph for the d_out×d_in product
B A), reporting no visible loss in accuracy. `detach_norm=True` (the default) does this;
`detach_norm=False` back-propagates through the norm exactly.

Trainable parameters per target matrix: r (d_in + d_out) + d_out (the magnitude m).

`magnitude_direction_change(W₀, W)` gives the paper's Fig. 2 statistics: with w_n the
n-th output unit's weight vector (a paper column),

    ΔM = (1/d_out) Σ_n | ‖w_n‖ − ‖w₀_n‖ |        ΔD = (1/d_out) Σ_n (1 − cos(w_n, w₀_n))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from minipeft.methods.base import register_method
from minipeft.methods.lora import LoraConfig, LoraLayer, LoraModel


@dataclass
class DoraConfig(LoraConfig):
    """LoRA's fields (r, alpha, dropout, target_modules, layers_to_transform,
    top_layers, use_rslora, init), plus

    detach_norm: treat ‖W₀ + (α/r)BA‖_c as a constant in backward (paper, section 4.3).
    """

    peft_type: ClassVar[str] = "DORA"
    detach_norm: bool = True


PRESETS = {
    "dora": lambda: DoraConfig(r=8, alpha=16, target_modules=["q", "v"]),
}
LEARNING_RATES = {"dora": 3e-3}  # AdamW rate of each preset: LoRA's


def row_norm(weight: torch.Tensor) -> torch.Tensor:
    """‖·‖_c of the paper for an nn.Linear weight (d_out, d_in): one norm per output row."""
    return weight.norm(dim=1)  # (d_out,)


class DoraLayer(LoraLayer):
    """LoraLayer plus a trainable magnitude m (d_out,) per adapter."""

    def __init__(self, base_layer: nn.Linear):
        super().__init__(base_layer)
        self.lora_magnitude = nn.ParameterDict()
        self.detach_norm: dict[str, bool] = {}
        self.merged_norm: torch.Tensor | None = None  # ‖V‖_c at merge time, for unmerge

    # --- adapters -----------------------------------------------------------------
    def add_adapter(self, name: str, config: DoraConfig) -> None:
        super().add_adapter(name, config)  # A random, B = 0
        magnitude = row_norm(self.base_layer.weight.detach()).clone()  # m₀ = ‖W₀‖_c: (d_out,)
        self.lora_magnitude[name] = nn.Parameter(magnitude, requires_grad=False)
        self.detach_norm[name] = config.detach_norm

    def adapter_tensors(self, name: str) -> dict[str, nn.Parameter]:
        return {**super().adapter_tensors(name), "lora_magnitude": self.lora_magnitude[name]}

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        del self.lora_magnitude[name]
        del self.detach_norm[name]

    # --- computing ------------------------------------------------------------------
    @property
    def magnitude(self) -> nn.Parameter:
        return self.lora_magnitude[self.active_adapter]

    def direction_norm(self) -> torch.Tensor:
        """‖V‖_c = ‖W₀ + (α/r) B A‖ per output row: (d_out,). Detached if configured."""
        lora_weight = self.scaling[self.active_adapter] * (self.B @ self.A)  # (d_out, d_in)
        norm = row_norm(self.base_layer.weight + lora_weight)
        return norm.detach() if self.detach_norm[self.active_adapter] else norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled or self.merged or self.active_adapter is None:
            return self.base_layer(x)  # merged: W already holds W'
        base = F.linear(x, self.base_layer.weight)  # W₀ x: (…, d_out), bias added last
        direction = base + self.lora_delta(x).to(base.dtype)  # V x = W₀x + (α/r) B A x
        scale = self.magnitude / self.direction_norm()  # m / ‖V‖_c: (d_out,)
        result = scale * direction  # W' x = (m/‖V‖_c) ⊙ V x
        bias = self.base_layer.bias
        return result if bias is None else result + bias

    def merged_weight(self) -> torch.Tensor:
        """Dense W' = (m / ‖V‖_c) · V, scaling each output row. Merge and analysis only."""
        V = self.base_layer.weight + self.scaling[self.active_adapter] * (self.B @ self.A)
        return (self.magnitude / row_norm(V))[:, None] * V  # (d_out, d_in)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = W' − W₀ (what merge() adds to the base weight)."""
        if self.active_adapter is None:
            return torch.zeros_like(self.base_layer.weight)
        return self.merged_weight() - self.base_layer.weight

    def merge(self) -> None:
        with torch.no_grad():
            norm = self.direction_norm().detach()
        super().merge()  # W ← W₀ + (W' − W₀) = W' (refuses the tied head, or a second merge)
        self.merged_norm = norm

    def unmerge(self) -> None:
        """W₀ = V − (α/r) B A with V = W' · ‖V‖_c / m (row-wise), using the norm saved at merge."""
        if not self.merged:
            raise RuntimeError("DoraLayer is not merged; nothing to unmerge")
        with torch.no_grad():
            V = self.base_layer.weight * (self.merged_norm / self.magnitude)[:, None]
            lora_weight = self.scaling[self.active_adapter] * (self.B @ self.A)
            self.base_layer.weight.copy_(V - lora_weight)
        self.merged = False
        self.merged_norm = None


@register_method(DoraConfig)
class DoraModel(LoraModel):
    """A frozen GPT whose target Linear layers are DoraLayers."""

    layer_class: ClassVar[type[LoraLayer]] = DoraLayer

    def add_weighted_adapter(self, *args, **kwargs) -> None:
        raise NotImplementedError("weighted combination is defined for LoRA's ΔW = BA only; "
                                  "DoRA adapters also carry a magnitude vector, and a sum of "
                                  "normalised directions is not one. Combine LoRA adapters")


# --------------------------------------------------------------------------------------
# Analysis: magnitude and direction changes (paper, Fig. 2)
# --------------------------------------------------------------------------------------
@torch.no_grad()
def magnitude_direction_change(w0: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    """(ΔM, ΔD) between a pretrained weight W₀ and a fine-tuned W, both (d_out, d_in).

    ΔM = mean over output units of |‖w_n‖ − ‖w₀_n‖|;  ΔD = mean of 1 − cos(w_n, w₀_n).
    """
    delta_m = (row_norm(w) - row_norm(w0)).abs().mean()
    delta_d = (1 - F.cosine_similarity(w, w0, dim=1)).mean()
    return delta_m.item(), delta_d.item()


@torch.no_grad()
def magnitude_direction_changes(model: LoraModel) -> dict[str, tuple[float, float]]:
    """(ΔM, ΔD) of every adapted layer of an unmerged LoRA or DoRA model, by module name."""
    changes = {}
    for name, layer in model.lora_layers():
        if layer.merged:
            raise RuntimeError("call unmerge() first: the changes compare W₀ with W₀ + ΔW")
        if layer.active_adapter is not None:
            w0 = layer.base_layer.weight
            changes[name] = magnitude_direction_change(w0, w0 + layer.delta_weight())
    return changes


__all__ = ["DoraConfig", "DoraLayer", "DoraModel", "magnitude_direction_change",
           "magnitude_direction_changes", "PRESETS"]
