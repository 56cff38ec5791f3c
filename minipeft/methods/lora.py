"""LoRA: Low-Rank Adaptation (Hu et al., 2021), with rsLoRA, LoRA+ and named adapters.

A frozen weight W₀ ∈ ℝ^{d×k} (d = d_out, k = d_in) gets a trainable low-rank update

    h = W₀x + ΔW x = W₀x + (α/r) · B A x,      B ∈ ℝ^{d×r},  A ∈ ℝ^{r×k},  r ≪ min(d, k)

A starts random (Kaiming-uniform, or Gaussian), B starts at zero, so ΔW = 0 and the model
begins exactly at the pretrained one (Hu et al., 2021, §4.1). Training computes
the update as x Aᵀ Bᵀ, two thin matrix products; the dense d×k matrix ΔW = (α/r) B A is
built only to merge it into W₀ (W ← W₀ + ΔW: no extra inference cost) or to analyse it.

Trainable parameters per target matrix:  r (d + k)  =  r (d_in + d_out).
Example from the course "Generative AI with Large Language Models", lecture 4
("Parameter-efficient fine-tuning"): W₀ ∈ ℝ^{512×64}, r = 8 → 8·(512 + 64) = 4,608
trainable numbers instead of 32,768 (an 86% reduction).

Variants in this file:

* rsLoRA (Kalajdzievski, 2023): scale α/√r instead of α/r (`use_rslora=True`), so the
  update's size stays stable as r grows and large ranks keep learning.
* LoRA+ (Hayou et al., 2024): train B with a larger learning rate than A, lr_B = λ·lr_A
  (λ ≈ 16); `loraplus_param_groups` builds the two AdamW groups for `train(param_groups=)`.
* Several named adapters on one base (`add_adapter`, `set_adapter`, `delete_adapter`) and
  their weighted combination (`add_weighted_adapter`: "cat" exact, "linear" approximate,
  "svd" truncated, as in peft).

`LoraLayer` is written to be reused: DoRA and QLoRA subclass it and keep `lora_A`, `lora_B`,
`scaling`, `lora_down(x)` and `lora_delta(x)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from minipeft.checks import check_choice, check_fraction, check_positive, check_positive_int
from minipeft.methods.adalora import AdaLoraLayer
from minipeft.methods.base import (PeftConfig, PeftModel, TunerLayer, copy_adapter_tensors,
                                   find_targets, place_layers, read_adapter, register_method,
                                   replace_module, saved_key)

INITS = ("kaiming", "gaussian")
COMBINATIONS = ("cat", "linear", "svd")  # add_weighted_adapter, with peft's meanings


@dataclass
class LoraConfig(PeftConfig):
    """Hyper-parameters of one LoRA adapter.

    r: rank of ΔW = B A.  alpha: α in the scale α/r (or α/√r with use_rslora).
    dropout: dropout probability on the LoRA branch's input x (the base path sees x as is).
    target_modules / layers_to_transform / top_layers: where to put it (see PeftConfig).
    init: "kaiming" (uniform, as nn.Linear) or "gaussian" (as in Hu et al.) for A; B = 0.
    """

    peft_type: ClassVar[str] = "LORA"
    target_modules: list[str] | None = field(default_factory=lambda: ["q", "v"])
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    use_rslora: bool = False
    init: str = "kaiming"

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.r, "LoRA rank r")
        check_positive(self.alpha, "alpha (the update is scaled by alpha/r)")
        check_fraction(self.dropout, "dropout")
        check_choice(self.init, INITS, "init")

    @property
    def scaling(self) -> float:
        """s = α/r (Hu et al.) or α/√r (rsLoRA, Kalajdzievski 2023)."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


PRESETS = {
    "lora": lambda: LoraConfig(r=8, alpha=16, target_modules=["q", "v"]),
    "rslora": lambda: LoraConfig(r=8, alpha=16, target_modules=["q", "v"], use_rslora=True),
    # Every matrix, MLP included ("LoRA Without Regret", Schulman et al., Thinking Machines
    # Lab, 2025; Dettmers et al., 2023, §4).
    "lora_all": lambda: LoraConfig(r=8, alpha=16,
                                   target_modules=["q", "k", "v", "o", "fc", "proj"]),
}
# The AdamW rate each preset fine-tunes at (minipeft.methods.learning_rate), chosen by
# sentiment runs on `small`, 150 steps, batch 16.
LEARNING_RATES = {"lora": 3e-3, "rslora": 3e-3, "lora_all": 3e-3}


# --------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------
class LoraLayer(TunerLayer):
    """A frozen nn.Linear plus one or more named low-rank updates; one is active at a time.

    Per adapter `name`:  lora_A[name]: (r, d_in),  lora_B[name]: (d_out, r),
    lora_dropout[name], scaling[name] = α/r (or α/√r).
    """

    def __init__(self, base_layer: nn.Linear):
        super().__init__(base_layer)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None  # None: this layer has nothing to add
        self.tied_to_embedding = False  # set for the LM head, whose weight is E

    @property
    def in_features(self) -> int:
        return self.base_layer.weight.shape[1]  # k

    @property
    def out_features(self) -> int:
        return self.base_layer.weight.shape[0]  # d

    # --- adapters -----------------------------------------------------------------
    def add_adapter(self, name: str, config: LoraConfig) -> None:
        d, k = self.out_features, self.in_features
        weight = self.base_layer.weight
        A = torch.empty(config.r, k, dtype=weight.dtype, device=weight.device)  # A: (r, k)
        if config.init == "kaiming":
            # nn.Linear's own init: U(−1/√k, 1/√k), so A x has the scale of a Linear output.
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        else:
            # Gaussian as in Hu et al.; std 1/√k keeps Var(A x) ≈ Var(x) for unit-variance x.
            nn.init.normal_(A, std=1 / math.sqrt(k))
        B = torch.zeros(d, config.r, dtype=weight.dtype, device=weight.device)  # B = 0: ΔW = 0
        self.lora_A[name] = nn.Parameter(A, requires_grad=False)
        self.lora_B[name] = nn.Parameter(B, requires_grad=False)
        self.lora_dropout[name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling[name] = config.scaling

    def adapter_tensors(self, name: str) -> dict[str, nn.Parameter]:
        """The trainable tensors of adapter `name`, by the suffix they are saved under."""
        return {"lora_A": self.lora_A[name], "lora_B": self.lora_B[name]}

    def set_adapter(self, name: str | None) -> None:
        """Make `name` the acting, trainable adapter (None if this layer does not hold it)."""
        self.active_adapter = name if name in self.lora_A else None
        for held in self.lora_A:
            for p in self.adapter_tensors(held).values():
                p.requires_grad_(held == self.active_adapter)

    def delete_adapter(self, name: str) -> None:
        for store in (self.lora_A, self.lora_B, self.lora_dropout):
            del store[name]
        del self.scaling[name]
        if self.active_adapter == name:
            self.active_adapter = None

    # --- computing ------------------------------------------------------------------
    @property
    def A(self) -> nn.Parameter:
        return self.lora_A[self.active_adapter]

    @property
    def B(self) -> nn.Parameter:
        return self.lora_B[self.active_adapter]

    def lora_down(self, x: torch.Tensor) -> torch.Tensor:
        """s · A dropout(x), the scaled rank-r code of x: (…, k) → (…, r).

        The scale s = α/r multiplies this r-wide tensor rather than the d-wide output: the
        same product, r/d of the elementwise work (16× less for r = 8 on a 128-wide layer).
        """
        name = self.active_adapter
        x = self.lora_dropout[name](x).to(self.lora_A[name].dtype)
        return self.scaling[name] * F.linear(x, self.lora_A[name])  # s · x Aᵀ: (…, r)

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """(α/r) · B A dropout(x), computed as (s · x Aᵀ) Bᵀ: (…, k) → (…, r) → (…, d)."""
        return F.linear(self.lora_down(x), self.lora_B[self.active_adapter])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # W₀x + b: (…, d)
        if self.disabled or self.merged or self.active_adapter is None:
            return result  # merged: W already holds W₀ + ΔW
        # h = W₀x + b + B (s · A x)      (Hu et al., 2021, eq. 3, with s = α/r)
        return add_low_rank(result, self.lora_down(x), self.lora_B[self.active_adapter])

    def delta_weight(self) -> torch.Tensor:
        """Dense ΔW = (α/r) B A: (d, r) @ (r, k) → (d, k). Merge and analysis only."""
        if self.active_adapter is None:
            return torch.zeros_like(self.base_layer.weight)
        return self.scaling[self.active_adapter] * (self.B @ self.A)

    def cannot_merge_reason(self) -> str | None:
        if self.tied_to_embedding:
            return ("LoRA on the LM head cannot be merged: head.weight is the token "
                    "embedding E (weight tying), so W₀ + ΔW would change the input "
                    "embeddings too. Keep it unmerged or leave 'head' out of target_modules")
        return super().cannot_merge_reason()


def add_low_rank(result: torch.Tensor, code: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """result + code Bᵀ, i.e. W₀x + b + B (s·Ax): the one speed trick of the LoRA family.

    The value is the plain sum `result + F.linear(code, B)` (tests/test_lora.py checks the
    outputs and all gradients against it); two layout choices make it as cheap as it can be
    on a CPU (`python -m minipeft bench` shows the effect):
    * `torch.addmm(M, P, Q) = M + P Q` adds the rank-r product inside the matrix multiply
      instead of writing a second (…, d) tensor and adding it;
    * Bᵀ is copied to a row-major (r, d) matrix (a few hundred numbers), so autograd computes
      B's gradient as codeᵀ · grad, the fast layout; for a transposed view it would compute
      (gradᵀ · code)ᵀ, several times slower on narrow layers.
    Shapes: result (…, d), code (…, r), B (d, r).
    """
    code = code.to(result.dtype)
    B_t = B.to(result.dtype).t().contiguous()  # (r, d), row-major
    flat = torch.addmm(result.reshape(-1, result.shape[-1]), code.reshape(-1, code.shape[-1]),
                       B_t)  # (N, d), N = all leading dims flattened
    return flat.view(result.shape)


def check_adapter_name(name: str) -> None:
    """Adapter names become keys of nn.ParameterDicts, i.e. module attribute names."""
    if not isinstance(name, str) or not name.isidentifier() or hasattr(nn.Module, name):
        raise ValueError(f"adapter name {name!r} cannot be used: give a Python identifier that "
                         "is not an nn.Module attribute (e.g. 'sentiment', 'task_1', not 'half')")


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------
@register_method(LoraConfig)
class LoraModel(PeftModel):
    """A frozen GPT whose target Linear layers are LoraLayers; one adapter acts at a time.

    Subclasses (DoRA, QLoRA, MonteCLoRA) set `layer_class` and reuse the rest.
    """

    layer_class: ClassVar[type[LoraLayer]] = LoraLayer

    # --- building -------------------------------------------------------------------
    def inject(self, config: LoraConfig, adapter_name: str) -> None:
        """Add adapter `adapter_name` to every target, wrapping targets not wrapped yet."""
        check_adapter_name(adapter_name)
        targets = find_targets(self.base_model, config.target_modules,
                               config.layers_to_transform, config.top_layers)
        # A LoRA head stays unmerged (LoraLayer.cannot_merge_reason), so it is allowed.
        place_layers(self.base_model, targets,
                     lambda name, module: self.layer_with_adapter(module, adapter_name, config),
                     rank=config.r, allow_tied_head=True)
        if adapter_name == self.active_adapter:  # the first adapter, from __init__
            self.set_adapter(adapter_name)

    def layer_with_adapter(self, module: nn.Module, adapter_name: str,
                           config: LoraConfig) -> LoraLayer:
        """`module` wrapped in a layer_class (unless it is one already), holding the new
        adapter, frozen and inactive."""
        layer = module
        if not isinstance(module, LoraLayer):
            layer = self.layer_class(module)
            layer.tied_to_embedding = module.weight is self.base_model.tok_emb.weight
        layer.add_adapter(adapter_name, config)
        return layer

    def lora_layers(self) -> list[tuple[str, LoraLayer]]:
        return [(n, m) for n, m in self.tuner_layers() if isinstance(m, LoraLayer)]

    def _layers_holding(self, adapter_name: str) -> list[LoraLayer]:
        return [layer for _, layer in self.lora_layers() if adapter_name in layer.lora_A]

    @property
    def adapter_names(self) -> list[str]:
        return list(self.configs)

    def add_adapter(self, adapter_name: str, config: LoraConfig) -> None:
        """Attach a second (third, ...) adapter; it stays inactive until set_adapter()."""
        self.check_config(config)
        if adapter_name in self.configs:
            raise ValueError(f"an adapter named {adapter_name!r} exists already; pick another "
                             "name or delete_adapter() it first")
        self.configs[adapter_name] = config
        try:
            self.inject(config, adapter_name)
        except Exception:
            del self.configs[adapter_name]
            raise

    def set_adapter(self, adapter_name: str) -> None:
        """Only `adapter_name` acts in forward and has requires_grad=True; the others rest."""
        self._check_adapter(adapter_name)
        if any(m.merged for _, m in self.lora_layers()):
            raise RuntimeError("cannot switch adapters while one is merged; call unmerge() first")
        for _, layer in self.lora_layers():
            layer.set_adapter(adapter_name)
        self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an inactive adapter; layers left with no adapter get their base back."""
        self._check_adapter(adapter_name)
        if adapter_name == self.active_adapter:
            raise ValueError(f"{adapter_name!r} is the active adapter; set_adapter() another "
                             "one before deleting it")
        for name, layer in self.lora_layers():
            if adapter_name in layer.lora_A:
                layer.delete_adapter(adapter_name)
            if len(layer.lora_A) == 0:
                replace_module(self.base_model, name, layer.base_layer)
        del self.configs[adapter_name]

    def _check_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.configs:
            raise ValueError(f"no adapter named {adapter_name!r}; this model has "
                             f"{self.adapter_names}")

    # --- weighted combination -------------------------------------------------------
    def add_weighted_adapter(self, adapters: list[str], weights: list[float],
                             adapter_name: str, combination: str = "svd",
                             rank: int | None = None, svd_clamp: float | None = None) -> None:
        """New adapter combining `adapters` with `weights`; the three combinations of peft.

        With ΔWᵢ = sᵢ Bᵢ Aᵢ (sᵢ = αᵢ/rᵢ) and a new adapter of scale 1 (α = r):

        cat:    stack the factors, A_new = [w₁s₁A₁; w₂s₂A₂; …] (Σrᵢ × k),
                B_new = [B₁ | B₂ | …] (d × Σrᵢ), so B_new A_new = Σᵢ wᵢ ΔWᵢ exactly.
        linear: add the factors, with √|wᵢsᵢ| on each side (the sign goes on A):
                A_new = Σᵢ sign(wᵢsᵢ) √|wᵢsᵢ| Aᵢ,  B_new = Σᵢ √|wᵢsᵢ| Bᵢ  (all rᵢ equal).
                Only approximate: (Σᵢ cᵢBᵢ)(Σⱼ cⱼAⱼ) = Σᵢ cᵢ²BᵢAᵢ + Σ_{i≠j} cᵢcⱼBᵢAⱼ, and
                the cross terms BᵢAⱼ are not part of Σᵢ wᵢ ΔWᵢ. Exact for one adapter.
        svd:    form Σᵢ wᵢ ΔWᵢ densely and keep its top `rank` singular triplets (default
                rank = max rᵢ), B_new = U_r diag(σ), A_new = V_rᵀ: by Eckart–Young the best
                rank-`rank` approximation. svd_clamp = q clips every entry of B_new and
                A_new to ±(the q-quantile of all their entries), as peft's `svd_clamp`.

        The same meanings as peft's `add_weighted_adapter(combination_type=..., svd_rank=,
        svd_clamp=)` (peft 0.21.2, `LoraModel.add_weighted_adapter`); two differences:
        peft turns any combination of a single adapter into "linear" (ignoring svd_rank),
        here "svd" of one adapter still truncates to `rank`; and peft keeps `use_rslora` of
        the first adapter while setting α = r, so with rsLoRA adapters its new adapter has
        scale √r instead of 1. Neither changes anything for several plain LoRA adapters.
        The new adapter is added inactive; call set_adapter(adapter_name) to use it.
        """
        configs = self._check_combination(adapters, weights, adapter_name, combination,
                                          svd_clamp)
        new_rank = self._combined_rank(adapters, combination, rank)
        # Scale 1: α = r (plain LoRA scaling) so the stored factors carry all of ΔW.
        new_config = replace(configs[0], r=new_rank, alpha=new_rank, use_rslora=False,
                             dropout=0.0)
        self.add_adapter(adapter_name, new_config)
        factors = {"cat": self._cat_factors, "linear": self._linear_factors}
        with torch.no_grad():
            for layer in self._layers_holding(adapter_name):
                if combination == "svd":
                    B, A = self._svd_factors(layer, adapters, weights, new_rank, svd_clamp)
                else:
                    B, A = factors[combination](layer, adapters, weights)
                layer.lora_B[adapter_name].copy_(B)
                layer.lora_A[adapter_name].copy_(A)

    def _check_combination(self, adapters, weights, adapter_name, combination, svd_clamp):
        if combination not in COMBINATIONS:
            raise ValueError(f"combination={combination!r}; choose one of {list(COMBINATIONS)}")
        if svd_clamp is not None and (combination != "svd" or not 0 < svd_clamp <= 1):
            raise ValueError(f"svd_clamp={svd_clamp!r}: give a quantile in (0, 1], and only "
                             "with combination='svd' (or leave it None)")
        if not adapters or len(adapters) != len(weights):
            raise ValueError(f"need one weight per adapter: got {len(adapters)} adapters and "
                             f"{len(weights)} weights")
        for name in adapters:
            self._check_adapter(name)
        where = {name: sorted(n for n, layer in self.lora_layers() if name in layer.lora_A)
                 for name in adapters}
        if len({tuple(modules) for modules in where.values()}) > 1:
            raise ValueError(f"adapters sit on different modules {where}; only adapters with "
                             "the same target_modules and blocks can be combined")
        if adapter_name in self.configs:
            raise ValueError(f"an adapter named {adapter_name!r} exists already")
        return [self.configs[name] for name in adapters]

    def _combined_rank(self, adapters: list[str], combination: str, rank: int | None) -> int:
        ranks = [self.configs[name].r for name in adapters]
        if combination != "svd" and rank is not None:
            raise ValueError(f"rank={rank} is for combination='svd'; {combination!r} has rank "
                             "Σ rᵢ (cat) or r (linear)")
        if combination == "linear":
            if len(set(ranks)) > 1:
                raise ValueError(f"combination='linear' adds the A's and the B's, so every "
                                 f"adapter needs the same r (got {ranks}); use 'cat' or 'svd'")
            return ranks[0]
        if combination == "svd":
            return max(ranks) if rank is None else rank
        smallest = min(min(layer.base_layer.weight.shape)
                       for layer in self._layers_holding(adapters[0]))
        if sum(ranks) > smallest:
            raise ValueError(f"the 'cat' combination has rank Σ rᵢ = {sum(ranks)}, more than "
                             f"min(d_out, d_in) = {smallest}; use combination='svd' with "
                             f"rank ≤ {smallest}")
        return sum(ranks)

    @staticmethod
    def _cat_factors(layer: LoraLayer, adapters, weights):
        A = torch.cat([w * layer.scaling[n] * layer.lora_A[n]
                       for n, w in zip(adapters, weights)], dim=0)  # (Σ rᵢ, k)
        B = torch.cat([layer.lora_B[n] for n in adapters], dim=1)  # (d, Σ rᵢ)
        return B, A

    @staticmethod
    def _linear_factors(layer: LoraLayer, adapters, weights):
        A, B = 0, 0
        for n, w in zip(adapters, weights):
            c = w * layer.scaling[n]  # cᵢ = wᵢ sᵢ, split as √|cᵢ| on each side
            A = A + math.copysign(math.sqrt(abs(c)), c) * layer.lora_A[n]  # (r, k)
            B = B + math.sqrt(abs(c)) * layer.lora_B[n]  # (d, r)
        return B, A

    @staticmethod
    def _svd_factors(layer: LoraLayer, adapters, weights, rank: int, clamp: float | None):
        delta = sum(w * layer.scaling[n] * (layer.lora_B[n] @ layer.lora_A[n])
                    for n, w in zip(adapters, weights))  # Σ wᵢ ΔWᵢ: (d, k)
        U, S, Vh = torch.linalg.svd(delta.float(), full_matrices=False)  # ΔW = U diag(S) Vh
        B = U[:, :rank] * S[:rank]  # U_r diag(σ): (d, rank)
        A = Vh[:rank]  # V_rᵀ: (rank, k)
        if clamp is not None:  # clip outlying entries (kohya-ss' svd_merge_lora, as peft)
            bound = torch.quantile(torch.cat([B.flatten(), A.flatten()]), clamp)
            B, A = B.clamp(-bound, bound), A.clamp(-bound, bound)
        return B.to(delta.dtype), A.to(delta.dtype)

    # --- saving and loading -------------------------------------------------------------
    def adapter_state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        """φ of one adapter (default: the active one), keyed 'base_model.<module>.lora_A' etc.

        The adapter's own name is not part of the keys (see minipeft.methods.base), so a file
        saved from adapter "math" loads into a fresh model's "default" adapter.
        """
        return {name: p.detach() for name, p in self._adapter_parameters(adapter_name).items()}

    def _adapter_parameters(self, adapter_name: str | None) -> dict[str, nn.Parameter]:
        adapter_name = adapter_name or self.active_adapter
        self._check_adapter(adapter_name)
        params = {}
        for module_name, layer in self.lora_layers():
            if adapter_name in layer.lora_A:
                for suffix, p in layer.adapter_tensors(adapter_name).items():
                    params[saved_key(module_name, suffix)] = p
        return params

    def load_adapter_state_dict(self, tensors: dict[str, torch.Tensor],
                                adapter_name: str | None = None) -> None:
        """Copy saved φ into adapter `adapter_name`, checking names and shapes exactly."""
        copy_adapter_tensors(self._adapter_parameters(adapter_name), tensors)

    def load_adapter(self, directory: str | Path, adapter_name: str) -> None:
        """Add the adapter saved in `directory` under the name `adapter_name` (inactive)."""
        config, tensors = read_adapter(directory, self.model_config.to_dict())
        self.add_adapter(adapter_name, config)
        try:
            self.load_adapter_state_dict(tensors, adapter_name)
        except Exception:
            self.delete_adapter(adapter_name)
            raise


# --------------------------------------------------------------------------------------
# LoRA+
# --------------------------------------------------------------------------------------
# Which LoRA+ rate each trainable tensor of the LoRA family gets. peft's
# create_loraplus_optimizer gives ratio · lr to lora_B and to every 1-D tensor and lr to the
# rest; each tensor here gets the rate peft gives its counterpart.
LORAPLUS_B_SIDE = {
    "lora_B": "B (d_out, r)",
    "lora_magnitude": "DoRA's magnitude m (d_out,): peft's lora_magnitude_vector, 1-D",
    "lora_log_lambda": "MonteCLoRA's log Λ (r,): 1-D",
    "lora_log_alpha": "MonteCLoRA's Dirichlet log α (N,): 1-D",
    "P": "AdaLoRA's left vectors P (d_out, r): peft's lora_B",
}
LORAPLUS_A_SIDE = {
    "lora_A": "A (r, d_in); MonteCLoRA's mean μ",
    "Q": "AdaLoRA's right vectors Q (r, d_in): peft's lora_A",
    "lambda_": "AdaLoRA's λ (r,): peft stores it as lora_E of shape (r, 1), not 1-D",
}


def loraplus_param_groups(model: PeftModel, lr: float, ratio: float = 16.0) -> list[dict]:
    """AdamW groups for LoRA+ (Hayou et al., 2024): lr_A = lr, lr_B = ratio · lr.

    With B = 0 at init and wide layers, equal rates make B learn too slowly relative to A;
    a larger rate for B (λ = ratio ≈ 16) fixes that. Every trainable tensor of the active
    adapter lands in exactly one of the two groups, for every LoRA-family method (LoRA,
    rsLoRA, DoRA, QLoRA, MonteCLoRA, AdaLoRA), as peft's `create_loraplus_optimizer(model,
    optimizer_cls, lr=lr, loraplus_lr_ratio=ratio)` groups them: lora_B and the 1-D tensors
    at ratio · lr, the rest at lr (see LORAPLUS_B_SIDE / LORAPLUS_A_SIDE). peft also sets
    each group's weight decay (loraplus_weight_decay, default 0); here the optimizer's own
    weight_decay applies to the matrices, and `make_optimizer` keeps the 1-D tensors (DoRA's
    magnitude m) out of it.
    """
    if ratio <= 0 or lr <= 0:
        raise ValueError(f"lr and ratio must be positive, got lr={lr}, ratio={ratio}")
    a_side, b_side = [], []
    for role, tensor in active_adapter_tensors(model):
        if role in LORAPLUS_B_SIDE:
            b_side.append(tensor)
        elif role in LORAPLUS_A_SIDE:
            a_side.append(tensor)
    grouped = {id(p) for p in a_side + b_side}
    left_out = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in grouped]
    if left_out:
        raise ValueError(f"LoRA+ has no learning rate for the trainable tensors {left_out}: "
                         "it is defined for the LoRA family (LoRA, DoRA, QLoRA, MonteCLoRA, "
                         "AdaLoRA); freeze them, or build the parameter groups by hand")
    if not grouped:
        raise ValueError("the model has no active LoRA-family adapter to build LoRA+ groups for")
    return [{"params": a_side, "lr": lr}, {"params": b_side, "lr": ratio * lr}]


def active_adapter_tensors(model: PeftModel) -> list[tuple[str, nn.Parameter]]:
    """(role, tensor) of every trainable adapter tensor, role = its name in the layer."""
    found = []
    for _, layer in model.tuner_layers():
        if isinstance(layer, LoraLayer) and layer.active_adapter is not None:
            found += layer.adapter_tensors(layer.active_adapter).items()
        elif isinstance(layer, AdaLoraLayer):
            found += layer.svd_parameters().items()
    return [(role, p) for role, p in found if p.requires_grad]
