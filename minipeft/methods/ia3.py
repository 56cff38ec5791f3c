"""IA³: Infused Adapter by Inhibiting and Amplifying Inner Activations.

Paper: Liu et al. (2022) "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper
than In-Context Learning". Three learned vectors per block rescale activations elementwise:

    K  = l_k ⊙ (W_K x + b_K)                   l_k ∈ R^d   keys
    V  = l_v ⊙ (W_V x + b_V)                   l_v ∈ R^d   values
    FF = W_proj (l_ff ⊙ GELU(W_fc x + b_fc)) + b_proj       l_ff ∈ R^{d_ff}  MLP hidden

Every vector starts at 1, so the wrapped model computes exactly what the pretrained one does.
Trainable parameters: L'·(2·d + d_ff) for L' adapted blocks (the default targets), i.e.
|l| summed over the targets; about 0.05 % of a large model, and the vectors fold into the
weights at inference (the lecture "Parameter Efficient Fine Tuning: Blazing fast
fine-tuning!" calls IA³ ultra-light for both reasons).

Targets use the shared module names: "k" and "v" scale the *output* of that Linear;
"proj" scales the *input* of the MLP's output layer, which is the hidden activation l_ff
multiplies. Because each rescaling is linear, it folds into the weights:

    l ⊙ (W x + b)   = (diag(l) W) x + l ⊙ b         rows of W_K, W_V (and their biases)
    W (l ⊙ h) + b   = (W diag(l)) h + b             columns of W_proj, bias unchanged

so after `merge()` the model has no extra cost at inference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn

from minipeft.methods.base import (PeftConfig, PeftModel, TunerLayer, find_targets,
                                   place_layers, register_method)

OUTPUT_SCALED = ("k", "v")  # l ⊙ (W x + b)
INPUT_SCALED = ("proj",)  # W (l ⊙ h) + b: l_ff on the MLP hidden activation
IA3_TARGETS = (*OUTPUT_SCALED, *INPUT_SCALED)


@dataclass
class IA3Config(PeftConfig):
    """target_modules ⊆ ("k", "v", "proj"): l_k, l_v, l_ff of the paper (all three by default)."""

    peft_type: ClassVar[str] = "IA3"
    target_modules: list[str] | None = field(default_factory=lambda: list(IA3_TARGETS))

    def __post_init__(self):
        super().__post_init__()
        unsupported = [t for t in self.target_modules or [] if t not in IA3_TARGETS]
        if unsupported:
            raise ValueError(
                f"IA³ target(s) {unsupported} not supported; choose from {list(IA3_TARGETS)} "
                "('k', 'v' rescale keys and values; 'proj' rescales the MLP hidden "
                "activation that feeds mlp.proj, the paper's l_ff)")


class IA3Layer(TunerLayer):
    """A frozen nn.Linear whose output (k, v) or input (proj) is rescaled by a vector l."""

    def __init__(self, base_layer: nn.Linear, scales_input: bool):
        super().__init__(base_layer)
        self.scales_input = scales_input
        width = base_layer.in_features if scales_input else base_layer.out_features
        self.ia3_l = nn.Parameter(torch.ones(width))  # l = 1: the layer is unchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled or self.merged:
            return self.base_layer(x)
        if self.scales_input:
            return self.base_layer(x * self.ia3_l)  # W (l ⊙ h) + b: (B, T, d_ff) → (B, T, d)
        return self.base_layer(x) * self.ia3_l  # l ⊙ (W x + b): (B, T, d)

    def merge(self) -> None:
        """W ← W diag(l) (input) or diag(l) W, b ← l ⊙ b (output): the same function."""
        if self.merged:
            raise RuntimeError("IA³ layer is already merged; call unmerge() first")
        self._rescale_weights(self.ia3_l.detach())
        self.merged = True

    def unmerge(self) -> None:
        """Divide the rescaling back out (possible only while every entry of l is non-zero)."""
        if not self.merged:
            raise RuntimeError("IA³ layer is not merged; nothing to unmerge")
        l = self.ia3_l.detach()
        if bool((l == 0).any()):
            raise ValueError("cannot unmerge: l has zero entries, so the merge erased those "
                             "rows/columns of the base weight; reload the base model instead")
        self._rescale_weights(1.0 / l)
        self.merged = False

    @torch.no_grad()
    def _rescale_weights(self, factor: torch.Tensor) -> None:
        weight = self.base_layer.weight  # (out, in)
        if self.scales_input:
            weight *= factor[None, :].to(weight.dtype)  # column j scaled by l_j
        else:
            weight *= factor[:, None].to(weight.dtype)  # row i scaled by l_i
            if self.base_layer.bias is not None:
                self.base_layer.bias *= factor.to(weight.dtype)


@register_method(IA3Config)
class IA3Model(PeftModel):
    """Frozen GPT whose keys, values and MLP hidden activations are rescaled by learned l."""

    def inject(self, config: IA3Config, adapter_name: str) -> None:
        targets = find_targets(self.base_model, config.target_modules,
                               config.layers_to_transform, config.top_layers)
        place_layers(self.base_model, targets,
                     lambda name, layer: IA3Layer(layer, scales_input=name.endswith(".proj")),
                     method="IA³")


PRESETS = {"ia3": lambda: IA3Config()}
# A few scaling vectors each carry a lot of the update, so IA³ needs ten times LoRA's rate:
# at 3e-3 it stays at chance (sentiment runs on `small`, 150 steps, batch 16).
LEARNING_RATES = {"ia3": 3e-2}
