"""Bottleneck adapters: small residual networks inserted into a frozen transformer.

Papers: Houlsby et al. (2019) "Parameter-Efficient Transfer Learning for NLP" (two adapters
per block); Bapna & Firat (2019) "Simple, Scalable Adaptation for Neural Machine Translation"
(one adapter per block, after the attention); Pfeiffer et al. (2021) "AdapterFusion" (one
adapter per block, after the feed-forward network); He et al. (2022) "Towards a Unified View
of Parameter-Efficient Transfer Learning" (the parallel adapter, with a scale s).

An adapter is a two-layer network with a narrow bottleneck m ≪ d and a skip connection:

    A(h) = W_up σ(W_down h + b_down) + b_up       W_down: (m × d), W_up: (d × m)
    sequential:  y = f(x);  y ← y + s · A(y)        after a sub-layer f (attention or MLP)
    parallel:    y = f(x) + s · A(x)                beside f, reading f's own input

W_up and b_up start at zero, so A(h) = 0 and the wrapped model computes exactly what the
pretrained one does ("near-identity initialisation", Houlsby et al.); W_down starts small
and random so that W_up receives a gradient from the first step.

Placements in our pre-LayerNorm GPT (x is the residual stream; the lecture "Parameter
Efficient Fine Tuning: Blazing fast fine-tuning!" tables the same placements):

    houlsby   x ← x + [y + s·A(y)], y = Attn(LN₁ x);  x ← x + [y + s·A(y)], y = MLP(LN₂ x)
    pfeiffer  the adapter after the MLP only
    bapna     the adapter after the attention only
    parallel  x ← x + MLP(LN₂ x) + s·A(LN₂ x)      (beside the MLP; `parallel_to` can pick
                                                     the attention, or both sub-layers)
    io        x₀ ← x₀ + s·A_in(x₀) before the first block, x_L ← x_L + s·A_out(x_L) after
              the last one (the simplest plug-in, and the weakest)

Trainable parameters: each adapter has 2·d·m + m + d entries (two matrices and two
biases), with m = d / reduction_factor unless `bottleneck_size` is given. With L' adapted
blocks: houlsby 2·L'·(2dm + m + d); pfeiffer, bapna, parallel (one sub-layer)
L'·(2dm + m + d); io 2·(2dm + m + d).

Unlike LoRA, an adapter has a non-linearity σ between its two matrices, so it cannot be
folded into the frozen weights: it stays in the network and costs a little time at
inference (Rücklé et al., 2021, "AdapterDrop", measure the slowdown; T. Chakraborty's
lecture "Parameter-Efficient Fine-Tuning (PEFT)" lists it among adapters' drawbacks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from minipeft.checks import check_choice, check_positive, check_positive_int
from minipeft.methods.base import (PeftConfig, PeftModel, TunerLayer, place_layers,
                                   register_method, resolve_layers)

SEQUENTIAL_PLACEMENTS = {  # placement → the sub-layers that get an adapter after them
    "houlsby": ("attn", "mlp"),
    "pfeiffer": ("mlp",),
    "bapna": ("attn",),
}
PLACEMENTS = (*SEQUENTIAL_PLACEMENTS, "parallel", "io")
PARALLEL_TO = {"mlp": ("mlp",), "attn": ("attn",), "both": ("attn", "mlp")}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
DOWN_INIT_STD = 1e-2  # Houlsby et al. draw the adapter weights from N(0, 10⁻²)
NOT_MERGEABLE = ("a bottleneck adapter has a non-linearity σ between W_down and W_up, so it is "
                 "no weight update ΔW and cannot be merged; keep the PeftModel for inference")


@dataclass
class AdapterConfig(PeftConfig):
    """Where the adapters go and how wide their bottleneck is.

    placement:        one of PLACEMENTS (see the module docstring).
    reduction_factor: bottleneck m = d_model / reduction_factor (Pfeiffer et al.'s knob).
    bottleneck_size:  m directly; overrides reduction_factor when given.
    activation:       σ, one of ACTIVATIONS.
    scale:            s in y + s·A(·); He et al. use s = 4 for the parallel adapter.
    parallel_to:      for placement="parallel" only: "mlp" (default), "attn" or "both".
    layers_to_transform / top_layers: which blocks get adapters (see PeftConfig; not for
                      "io", which uses the model's ends).
    """

    peft_type: ClassVar[str] = "ADAPTER"
    placement: str = "houlsby"
    reduction_factor: int = 16
    bottleneck_size: int | None = None
    activation: str = "relu"
    scale: float = 1.0
    parallel_to: str | None = None

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.placement, PLACEMENTS, "adapter placement")
        if self.target_modules is not None:
            raise ValueError("adapters are placed by `placement`, not by target_modules; "
                             "leave target_modules=None")
        check_choice(self.activation, ACTIVATIONS, "activation")
        check_positive_int(self.reduction_factor, "reduction_factor")
        if self.bottleneck_size is not None:
            check_positive_int(self.bottleneck_size, "bottleneck_size")
        check_positive(self.scale, "scale (s in y + s·A(·))")
        if self.parallel_to is not None and self.placement != "parallel":
            raise ValueError(f"parallel_to={self.parallel_to!r} only applies to "
                             f"placement='parallel' (this config has {self.placement!r})")
        if self.parallel_to is not None:
            check_choice(self.parallel_to, PARALLEL_TO, "parallel_to")
        if self.placement == "io" and self.chooses_blocks():
            raise ValueError("placement='io' puts one adapter before the first block and one "
                             "after the last; it takes no block choice, leave "
                             "layers_to_transform=None and top_layers=None")

    def bottleneck(self, d_model: int) -> int:
        """m, the bottleneck width, for a model of width d_model."""
        m = self.bottleneck_size or d_model // self.reduction_factor
        if m < 1:
            raise ValueError(f"reduction_factor={self.reduction_factor} leaves no bottleneck "
                             f"for d_model={d_model}; use a factor ≤ {d_model} or set "
                             "bottleneck_size")
        if m > d_model:
            raise ValueError(f"bottleneck_size={m} is wider than the model (d_model="
                             f"{d_model}); a bottleneck must be at most d_model wide")
        return m

    def wrapped_sublayers(self) -> dict[str, str]:
        """{sub-layer name in a Block: 'sequential' or 'parallel'} for per-block placements."""
        if self.placement == "parallel":
            return {name: "parallel" for name in PARALLEL_TO[self.parallel_to or "mlp"]}
        return {name: "sequential" for name in SEQUENTIAL_PLACEMENTS[self.placement]}


class Bottleneck(nn.Module):
    """A(h) = W_up σ(W_down h + b_down) + b_up, starting at exactly zero (W_up = b_up = 0)."""

    def __init__(self, d_model: int, bottleneck: int, activation: str):
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)  # W_down: (d → m)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, d_model)  # W_up: (m → d)
        nn.init.normal_(self.down.weight, std=DOWN_INIT_STD)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # near-identity start: A(h) = 0
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))  # (B, T, d) → (B, T, m) → (B, T, d)


class AdapterLayer(TunerLayer):
    """A frozen sub-layer (or block) with bottleneck adapter(s) around it."""

    def __init__(self, base_layer: nn.Module, scale: float):
        super().__init__(base_layer)
        self.scale = scale

    def cannot_merge_reason(self) -> str | None:
        return NOT_MERGEABLE


class SequentialAdapter(AdapterLayer):
    """y = f(x);  y ← y + s·A(y)   (Houlsby / Pfeiffer / Bapna)."""

    def __init__(self, base_layer: nn.Module, d_model: int, bottleneck: int, activation: str,
                 scale: float):
        super().__init__(base_layer, scale)
        self.adapter = Bottleneck(d_model, bottleneck, activation)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)  # f(x): (B, T, d); args: attention's prefix/cache
        if self.disabled:
            return y
        return y + self.scale * self.adapter(y)  # y + s·A(y)


class ParallelAdapter(AdapterLayer):
    """y = f(x) + s·A(x)   (He et al.: the adapter reads the sub-layer's input).

    Which input: the wrapped f is the MLP (or attention) module, and in this pre-LayerNorm
    GPT its input is the LayerNorm output LN₂ x, so A reads LN₂ x, not the residual stream
    x. AdapterHub's ParBn feeds its parallel adapter the residual stream instead (its
    `input_tensor`: x before LN₂ in a pre-LayerNorm model such as GPT-2). We keep the
    LayerNorm output because it is the input of the sub-layer the adapter runs beside, as
    in He et al.'s h ← h + s·A(x) with x the sub-layer's input: A is a second branch
    computing from exactly the normalised features f computes from, and wrapping the
    sub-layer needs no change to the Block. (In a post-LayerNorm model such as BERT the two
    coincide: the residual stream entering a sub-layer is already normalised.)
    """

    def __init__(self, base_layer: nn.Module, d_model: int, bottleneck: int, activation: str,
                 scale: float):
        super().__init__(base_layer, scale)
        self.adapter = Bottleneck(d_model, bottleneck, activation)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)  # f(x): (B, T, d)
        if self.disabled:
            return y
        return y + self.scale * self.adapter(x)  # f(x) + s·A(x)


class InputOutputAdapter(AdapterLayer):
    """A whole block with an adapter on the residual stream before and/or after it.

    Wrapping the first block gives "one adapter before the first layer", wrapping the last
    block "one after the last layer"; a one-block model gets both on the same wrapper.
    """

    def __init__(self, block: nn.Module, d_model: int, bottleneck: int, activation: str,
                 scale: float, adapt_input: bool, adapt_output: bool):
        super().__init__(block, scale)
        self.input_adapter = Bottleneck(d_model, bottleneck, activation) if adapt_input else None
        self.output_adapter = Bottleneck(d_model, bottleneck, activation) if adapt_output else None

    def forward(self, x: torch.Tensor, prefix=None, cache=None) -> torch.Tensor:
        if self.input_adapter is not None and not self.disabled:
            x = x + self.scale * self.input_adapter(x)  # x₀ ← x₀ + s·A_in(x₀): (B, T, d)
        x = self.base_layer(x, prefix=prefix, cache=cache)
        if self.output_adapter is not None and not self.disabled:
            x = x + self.scale * self.output_adapter(x)  # x_L ← x_L + s·A_out(x_L)
        return x


ADAPTER_KINDS = {"sequential": SequentialAdapter, "parallel": ParallelAdapter}


@register_method(AdapterConfig)
class AdapterModel(PeftModel):
    """Frozen GPT with bottleneck adapters wrapped around its sub-layers (see module doc)."""

    def inject(self, config: AdapterConfig, adapter_name: str) -> None:
        d = self.base_model.config.d_model
        m = config.bottleneck(d)
        if config.placement == "io":
            targets = self.end_blocks()
            first, last = targets[0][0], targets[-1][0]  # the same block in a 1-block model

            def make_adapter(name: str, block: nn.Module) -> AdapterLayer:
                return InputOutputAdapter(block, d, m, config.activation, config.scale,
                                          adapt_input=name == first, adapt_output=name == last)
        else:
            kinds = config.wrapped_sublayers()  # {"attn" / "mlp": "sequential" / "parallel"}
            targets = self.sublayers(config, kinds)

            def make_adapter(name: str, sublayer: nn.Module) -> AdapterLayer:
                kind = kinds[name.rpartition(".")[2]]
                return ADAPTER_KINDS[kind](sublayer, d, m, config.activation, config.scale)
        place_layers(self.base_model, targets, make_adapter, method="a bottleneck adapter")

    def end_blocks(self) -> list[tuple[str, nn.Module]]:
        """The first and the last block (one entry if they are the same block)."""
        blocks = self.base_model.blocks
        return [(f"blocks.{i}", blocks[i]) for i in sorted({0, len(blocks) - 1})]

    def sublayers(self, config: AdapterConfig,
                  kinds: dict[str, str]) -> list[tuple[str, nn.Module]]:
        """The attention / MLP modules that get an adapter, block by block."""
        gpt = self.base_model
        names = [f"blocks.{i}.{sublayer}"
                 for i in resolve_layers(config.layers_to_transform, config.top_layers,
                                         len(gpt.blocks))
                 for sublayer in kinds]
        return [(name, gpt.get_submodule(name)) for name in names]

PRESETS = {
    "houlsby": lambda: AdapterConfig(placement="houlsby", reduction_factor=16),
    "pfeiffer": lambda: AdapterConfig(placement="pfeiffer", reduction_factor=16),
    "parallel": lambda: AdapterConfig(placement="parallel", reduction_factor=16, scale=4.0),
    "io_adapter": lambda: AdapterConfig(placement="io", reduction_factor=4),
}
# The AdamW rate each preset fine-tunes at (minipeft.methods.learning_rate): LoRA's, chosen
# by sentiment runs on `small`, 150 steps, batch 16.
LEARNING_RATES = {"houlsby": 3e-3, "pfeiffer": 3e-3, "parallel": 3e-3, "io_adapter": 3e-3}
