"""Selective fine-tuning: train a chosen subset of the existing weights, θ = θ₀ + M ⊙ Δ.

Selective methods add no new modules: they pick which of the pretrained weights may move
(the "selective" family of Lialin, Deshpande & Rumshisky, 2023, "Scaling Down to Scale Up:
A Guide to Parameter-Efficient Fine-Tuning"; "sparse subnetworks" and "structured
composition" in Pfeiffer, Ruder, Vulić & Ponti, 2023, "Modular Deep Learning", Section 3).
In minipeft the base stays frozen, so every method here is written as a trainable
difference Δ on top of θ₀:

    θ = θ₀ + M ⊙ Δ                 M: a fixed (or, for ID3, growing) 0/1 mask over θ₀

and the forward pass runs the frozen GPT with θ swapped in (`torch.func.functional_call`).
Only Δ is in the optimizer, so AdamW keeps state for exactly the selected entries.

    method         paper                              trainable φ              count
    full FT        (the baseline)                     Δ for every tensor       N (all)
    head-only      Donahue et al., 2014 (DeCAF)       Δ for the top blocks,    Σ of those
                                                      ln_f (and the head)      tensors
    BitFit         Ben-Zaken, Ravfogel & Goldberg,    Δb for every bias        L·(7d + d_ff)
                   2022                               (or a named subset)      + d   (all)
    FISH mask      Sung, Nair & Raffel, 2021          Δ on the K entries of    K = ⌈budget·N_pool⌉
                                                      largest Fisher score
    PaFi           Liao, Meng & Monz, 2023            ... of smallest |θ₀|     K
    random mask    (baseline)                         ... chosen at random     K
    magnitude      Han et al., 2015; Frankle &        ... that moved most in   K
                   Carbin, 2019                       a short dense run
    ID3            Agarwal et al., 2025               ... grown by K/T per     K (after T steps)
                                                      step, largest
                                                      H = |∇θ|² / (|θ| + ε)^exp

(d = d_model, d_ff = 4d, L = blocks. BitFit's 7d + d_ff per block: biases of q, k, v, o
(4d), fc (d_ff), proj (d), and the two LayerNorm biases (2d); + d for the final LayerNorm.)

The masks' selectors, with their equations (the Fisher information, PaFi's |θ₀|, ID3's H and
its step-by-step unmasking), are in masks.py; `MaskModel` here only applies the chosen mask.

Tied weights. The LM head shares its matrix with the token embedding E (logits = h Eᵀ).
We treat E as one tensor everywhere, as pretraining did: a Δ on E moves the input
embedding and the output head together, the target name "head" means E, and E is counted
once in every parameter count.

Percentages. `print_trainable_parameters()` divides by the base model's size: Δ
re-parametrises existing weights rather than adding new ones, so full fine-tuning is 100%.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
from torch.func import functional_call

from minipeft.checks import (check_choice, check_fraction, check_non_negative,
                             check_non_negative_int, check_positive, check_positive_int)
from minipeft.methods.base import (BLOCK_MODULES, PeftConfig, PeftModel, find_targets,
                                   register_method, resolve_layers)
from minipeft.methods.masks import (ID3Unmasking, compute_fisher, count_selected,
                                    dense_finetune_change, id3_importance, mask_size,
                                    select_largest, select_largest_change, select_random,
                                    select_smallest_magnitude)
from minipeft.model import GPT


# --------------------------------------------------------------------------------------
# Which base tensors a method may touch
# --------------------------------------------------------------------------------------
def candidate_parameters(model: GPT, target_modules: list[str] | None = None,
                         layers_to_transform: int | list[int] | None = None,
                         top_layers: int | None = None) -> dict[str, nn.Parameter]:
    """The base tensors a selective method may change, by name, in a fixed order.

    * no target_modules, no blocks chosen → every parameter (E counted once: the tied head
                                            is E);
    * no target_modules, blocks chosen    → every parameter inside the selected blocks;
    * target_modules                      → weight and bias of those Linear layers in the
                                            selected blocks; "head" means the tied matrix E
                                            (tok_emb.weight).
    Blocks are chosen by `layers_to_transform` or `top_layers` (see PeftConfig).
    """
    everything = dict(model.named_parameters())  # named_parameters() lists a tied tensor once
    if target_modules is None and layers_to_transform is None and top_layers is None:
        return everything
    if target_modules is None:
        blocks = resolve_layers(layers_to_transform, top_layers, len(model.blocks))
        prefixes = tuple(f"blocks.{i}." for i in blocks)
        return {n: p for n, p in everything.items() if n.startswith(prefixes)}
    chosen = {}
    for name, module in find_targets(model, target_modules, layers_to_transform,
                                     top_layers):  # checks the names
        if name == "head":
            name, module = head_tensor_owner(model)
        for pname, p in module.named_parameters(prefix=name):
            chosen[pname] = p
    return chosen


def head_tensor_owner(model: GPT) -> tuple[str, nn.Module]:
    """Where the LM head's matrix lives: tok_emb when tied (our GPT), else the head itself."""
    if model.head.weight is model.tok_emb.weight:
        return "tok_emb", model.tok_emb
    return "head", model.head


# --------------------------------------------------------------------------------------
# The shared machinery: θ = θ₀ + Δ(φ), run through the frozen model
# --------------------------------------------------------------------------------------
class DeltaModel(PeftModel):
    """A frozen GPT whose named tensors are replaced by θ₀ + Δ(φ) in every forward pass.

    Subclasses build φ in `inject` and say how φ becomes Δ in `deltas()` (dense Δ per
    tensor, used for merging and analysis). `reparametrized_weights()` is what the forward
    pass uses; a subclass may override it with a cheaper route to the same θ₀ + Δ.
    """

    def deltas(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reparametrized_weights(self) -> dict[str, torch.Tensor]:
        return {name: self.base_parameter(name) + delta for name, delta in self.deltas().items()}

    def base_parameter(self, name: str) -> nn.Parameter:
        return self.base_model.get_parameter(name)

    def forward(self, *args, **kwargs):
        if self.adapters_disabled or self.merged:
            return self.base_model(*args, **kwargs)
        # functional_call runs base_model with these tensors in place of its own, without
        # touching the frozen θ₀. tie_weights=True: a new E also serves as the head.
        return functional_call(self.base_model, self.reparametrized_weights(), args, kwargs,
                               tie_weights=True)

    # --- merging: θ₀ ← θ₀ + Δ, the one sanctioned in-place change -----------------------
    delta_merged = False  # no tuner layers here: Δ is folded into θ₀ as a whole, or not at all

    @property
    def merged(self) -> bool:
        return self.delta_merged

    def merge(self) -> None:
        self.check_can_merge()
        if self.merged:
            raise RuntimeError(f"{type(self).__name__} is already merged; call unmerge() first")
        with torch.no_grad():
            for name, delta in self.deltas().items():
                self.base_parameter(name).add_(delta)
        self.delta_merged = True

    def unmerge(self) -> None:
        self.check_usable("unmerge")
        if not self.merged:
            raise RuntimeError(f"{type(self).__name__} is not merged; nothing to unmerge")
        with torch.no_grad():
            for name, delta in self.deltas().items():
                self.base_parameter(name).sub_(delta)
        self.delta_merged = False

    def merge_and_unload(self) -> GPT:
        if not self.merged:
            self.merge()
        return self.unload()

    @contextlib.contextmanager
    def disable_adapter(self):
        if self.merged:
            raise RuntimeError("disable_adapter() needs an unmerged model; call unmerge() first")
        with super().disable_adapter():
            yield self

    def count_parameters(self) -> tuple[int, int]:
        """(trainable φ entries, base parameters): Δ re-parametrises θ₀, it adds no capacity."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        return trainable, self.base_model.num_parameters()


def delta_key(parameter_name: str) -> str:
    """A ParameterDict key for a base tensor ('blocks.0.attn.q.bias' → 'blocks_0_attn_q_bias')."""
    return parameter_name.replace(".", "_")


class DenseDeltaModel(DeltaModel):
    """Δ = one trainable tensor, shaped like θ₀, for every selected base tensor.

    AdamW then holds exp_avg and exp_avg_sq for exactly these tensors. Subclasses say which
    tensors in `selected_parameters(config)`.
    """

    def selected_parameters(self, config: PeftConfig) -> list[str]:
        raise NotImplementedError

    def inject(self, config: PeftConfig, adapter_name: str) -> None:
        names = self.selected_parameters(config)
        self.delta = nn.ParameterDict({
            delta_key(n): nn.Parameter(torch.zeros_like(self.base_parameter(n))) for n in names
        })  # Δ = 0 at the start: the model begins exactly at θ₀
        self.delta_names = {delta_key(n): n for n in names}

    def deltas(self) -> dict[str, torch.Tensor]:
        return {self.delta_names[key]: d for key, d in self.delta.items()}


# --------------------------------------------------------------------------------------
# Full fine-tuning
# --------------------------------------------------------------------------------------
def _reject_targets(config: PeftConfig, use_instead: str) -> None:
    if config.target_modules is not None:
        raise ValueError(f"{type(config).__name__} does not take target_modules; "
                         f"{use_instead}")


@dataclass
class FullFinetuneConfig(PeftConfig):
    """Every parameter trains: θ = θ₀ + Δ with Δ the size of the whole model.

    Equivalent to ordinary full fine-tuning (AdamW on Δ from 0 takes the same steps as
    AdamW on θ from θ₀, as long as weight_decay = 0), but θ₀ stays untouched, so
    `disable_adapter()` still gives the pretrained model and the "adapter" is a full copy.
    """

    peft_type: ClassVar[str] = "FULL"

    def __post_init__(self):
        super().__post_init__()
        _reject_targets(self, "full fine-tuning trains everything (use HeadOnlyConfig or "
                              "MaskConfig to train a subset)")
        if self.chooses_blocks():
            raise ValueError("FullFinetuneConfig trains every block; to train only the top "
                             "blocks use HeadOnlyConfig(top_layers=N), to train chosen blocks "
                             "HeadOnlyConfig(layers_to_transform=[i, ...], top_layers=None)")


@register_method(FullFinetuneConfig)
class FullFinetuneModel(DenseDeltaModel):
    def selected_parameters(self, config: FullFinetuneConfig) -> list[str]:
        return list(candidate_parameters(self.base_model))


# --------------------------------------------------------------------------------------
# Head-only / last layers (Donahue et al., 2014)
# --------------------------------------------------------------------------------------
@dataclass
class HeadOnlyConfig(PeftConfig):
    """Tune only the top of the network on frozen lower features (Donahue et al., 2014).

    top_layers: the top N blocks (default 1), or 0 for no block. To name the blocks
            instead, give layers_to_transform (an index or a list, as in peft) with
            top_layers=None; both None trains every block. The final LayerNorm ln_f always
            trains.
    head:   also tune the LM head. It is tied to the token embedding E, so this trains E
            (vocab_size × d entries: a quarter of `small`) and moves the input embedding too.
    """

    peft_type: ClassVar[str] = "HEAD_ONLY"
    allows_zero_top_layers: ClassVar[bool] = True  # 0 = no block: only ln_f (and the head)
    top_layers: int | None = 1
    head: bool = False

    def __post_init__(self):
        super().__post_init__()
        _reject_targets(self, "it trains whole blocks: choose them with top_layers=N (the "
                              "top N) or layers_to_transform=[i, ...] with top_layers=None")


@register_method(HeadOnlyConfig)
class HeadOnlyModel(DenseDeltaModel):
    def selected_parameters(self, config: HeadOnlyConfig) -> list[str]:
        model = self.base_model
        blocks = [] if config.top_layers == 0 else resolve_layers(
            config.layers_to_transform, config.top_layers, len(model.blocks))
        prefixes = tuple(f"blocks.{i}." for i in blocks)
        names = [n for n, _ in model.named_parameters() if n.startswith(prefixes)]
        names += [n for n, _ in model.ln_f.named_parameters(prefix="ln_f")]
        if config.head:
            owner, _ = head_tensor_owner(model)
            names.append(f"{owner}.weight")
        return names


# --------------------------------------------------------------------------------------
# BitFit (Ben-Zaken et al., 2022)
# --------------------------------------------------------------------------------------
# bias name → where that bias lives inside a block ("ln_f" is outside the blocks).
BIAS_MODULES = {**BLOCK_MODULES, "ln1": "ln1", "ln2": "ln2"}
VALID_BIASES = (*BIAS_MODULES, "ln_f")


@dataclass
class BitFitConfig(PeftConfig):
    """Train only bias vectors: b = b₀ + Δb, every weight matrix frozen.

    bias_names: None = every bias (q k v o fc proj ln1 ln2 in each block, and ln_f), or a
    subset such as ["q", "fc"], the two the BitFit paper found most useful (Ben Zaken et al.,
    2022, §2 and Figure 1): b_q and b_m2, the bias of the first MLP layer, the one followed
    by GELU, h₄ = GELU(W_m2 h₃ + b_m2), which is `fc` here (`proj` is the second MLP layer,
    b_m3). b_k is allowed but learns nothing: its gradient is exactly zero, because q·b_k is
    added to every attention score of a query and softmax ignores a constant shift.
    layers_to_transform / top_layers: which blocks (default all); ln_f is outside the blocks
    and follows bias_names.
    """

    peft_type: ClassVar[str] = "BITFIT"
    bias_names: list[str] | None = None

    def __post_init__(self):
        super().__post_init__()
        _reject_targets(self, "choose biases with bias_names=[...] from "
                              f"{list(VALID_BIASES)}")
        if self.bias_names is not None:
            unknown = [b for b in self.bias_names if b not in VALID_BIASES]
            if unknown or not self.bias_names:
                raise ValueError(f"bias_names={self.bias_names}: unknown or empty; valid names "
                                 f"are {list(VALID_BIASES)} (None = all of them)")


@register_method(BitFitConfig)
class BitFitModel(DenseDeltaModel):
    def selected_parameters(self, config: BitFitConfig) -> list[str]:
        wanted = config.bias_names or list(VALID_BIASES)
        names = [f"blocks.{i}.{BIAS_MODULES[b]}.bias"
                 for i in resolve_layers(config.layers_to_transform, config.top_layers,
                                         len(self.base_model.blocks))
                 for b in wanted if b != "ln_f"]
        if "ln_f" in wanted:
            names.append("ln_f.bias")
        return names


# --------------------------------------------------------------------------------------
# Sparse masks: FISH, PaFi, random, magnitude pruning, ID3
# --------------------------------------------------------------------------------------
SELECTORS = ("fisher", "fisher_gold", "pafi", "random", "magnitude", "id3")
NEEDS_TASK = ("fisher", "fisher_gold", "magnitude")  # selectors that look at training data


@dataclass
class MaskConfig(PeftConfig):
    """θ = θ₀ + M ⊙ Δ with a mask M of K = ⌈budget · N_pool⌉ entries.

    selector:
      "fisher"      FISH mask: the K entries with the largest diagonal Fisher information,
                    F̂ = (1/N) Σ_i (∇θ log p(y_i|x_i))², y_i sampled from the model
                    (`compute_fisher`, n_samples examples of `task`'s train split);
      "fisher_gold" the same with y_i = the gold answer (the "empirical Fisher");
      "pafi"        the K entries of smallest |θ₀| (PaFi);
      "random"      K entries drawn uniformly (seeded): the baseline a selector must beat;
      "magnitude"   magnitude pruning: fine-tune the whole pool densely for magnitude_steps
                    AdamW steps at magnitude_lr on `task`, keep the K entries of largest
                    |θ_T − θ₀|, then start again from θ₀ with only those trainable (Han et
                    al., 2015; the lottery-ticket view of Frankle & Carbin, 2019);
      "id3"         starts empty and, after each of the first T training steps (T =
                    unmask_steps, default: the whole run), adds the K/T not-yet-chosen
                    entries of largest H(θ) = |∇θ|² / (|θ| + ε)^exp (ID3).
    budget: the fraction of the pool that trains, in (0, 1].
    target_modules / layers_to_transform / top_layers: the pool (see `candidate_parameters`);
    default every parameter.
    """

    peft_type: ClassVar[str] = "MASK"
    selector: str = "fisher"
    budget: float = 0.005
    seed: int = 0
    task: str | None = None
    n_samples: int = 64
    id3_exponent: float = 1.0
    id3_eps: float = 1e-8
    unmask_steps: int | None = None
    magnitude_steps: int = 30
    magnitude_lr: float = 1e-3

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.selector, SELECTORS, "selector")
        check_fraction(self.budget, "budget (the fraction of the pool that trains, e.g. 0.005)",
                       include_zero=False, include_one=True)
        check_non_negative_int(self.seed, "seed")
        if self.selector in NEEDS_TASK and self.task is None:
            raise ValueError(f"selector={self.selector!r} chooses the mask from training "
                             "examples: pass task='sentiment' (or another task)")
        check_positive_int(self.n_samples, "n_samples")
        check_non_negative(self.id3_exponent, "id3_exponent")
        check_positive(self.id3_eps, "id3_eps (keeps (|θ| + ε)^exp away from 0)")
        if self.unmask_steps is not None:
            check_positive_int(self.unmask_steps, "unmask_steps (None = the whole training run)")
        check_positive_int(self.magnitude_steps, "magnitude_steps (the dense run's length)")
        check_positive(self.magnitude_lr, "magnitude_lr (the dense run's AdamW rate)")


@register_method(MaskConfig)
class MaskModel(DeltaModel):
    """θ = θ₀ + scatter(indices, values): K trainable values at K chosen positions.

    φ is one vector `mask_values` (K,) and one index buffer `mask_indices` (K,) into the
    pool flattened in `candidate_parameters` order. The forward pass adds the values into a
    copy of θ₀ (index_add), so only those K entries can differ from θ₀ and AdamW keeps
    state for K numbers. The saved adapter is exactly these two vectors: the sparse
    difference. How the K positions are chosen is in masks.py; ID3 fills the slots step by
    step (`self.id3`, an `ID3Unmasking`), and an empty slot holds index -1.
    """

    def inject(self, config: MaskConfig, adapter_name: str) -> None:
        self.pool = candidate_parameters(self.base_model, config.target_modules,
                                         config.layers_to_transform, config.top_layers)
        self.pool_offsets = {}
        offset = 0
        for name, p in self.pool.items():
            self.pool_offsets[name] = offset
            offset += p.numel()
        self.pool_size = offset
        k = mask_size(config.budget, self.pool_size)
        self.mask_values = nn.Parameter(torch.zeros(k))  # Δ at the chosen entries: (K,)
        self.register_buffer("mask_indices", torch.full((k,), -1, dtype=torch.long))
        if config.selector != "id3":
            self.mask_indices.copy_(torch.sort(self.choose_fixed_mask(config, k)).values)
        self._routes, self._routes_device = None, None
        self.id3 = (ID3Unmasking(self.pool, config.id3_exponent, config.id3_eps,
                                 config.unmask_steps)
                    if config.selector == "id3" else None)

    def choose_fixed_mask(self, config: MaskConfig, k: int) -> torch.Tensor:
        """The K global indices of a fixed mask, chosen once before training."""
        if config.selector == "pafi":
            return select_smallest_magnitude(self.pool, k)
        if config.selector == "random":
            return select_random(self.pool_size, k, config.seed)
        from minipeft.tasks import load_examples
        from minipeft.tokenizer import load_tokenizer

        if config.selector == "magnitude":
            return select_largest_change(self.dense_change(config), k)
        fisher = compute_fisher(self.base_model, load_examples(config.task, "train"),
                                load_tokenizer(), config.n_samples,
                                labels="gold" if config.selector == "fisher_gold" else "model",
                                seed=config.seed, parameter_names=list(self.pool))
        return select_largest(fisher, k)

    def dense_change(self, config: MaskConfig) -> dict[str, torch.Tensor]:
        """θ_T − θ₀ of a short dense fine-tune of the pool (the magnitude selector's score)."""
        from minipeft.tasks import encode_example, load_examples
        from minipeft.tokenizer import load_tokenizer
        from minipeft.train import random_batches

        tokenizer = load_tokenizer()
        pairs = [encode_example(ex, tokenizer) for ex in load_examples(config.task, "train")]
        batches = random_batches(pairs, 16, tokenizer.eos_id, seed=config.seed)
        return dense_finetune_change(self.base_model, list(self.pool), batches,
                                     config.magnitude_steps, config.magnitude_lr, config.seed)

    # --- where each value goes --------------------------------------------------------
    @property
    def n_selected(self) -> int:
        return count_selected(self.mask_indices)

    def routes(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{tensor name: (positions inside that tensor, slots of mask_values)}."""
        if self._routes is None or self._routes_device != self.mask_indices.device:
            self._routes, self._routes_device = {}, self.mask_indices.device
            for name, p in self.pool.items():
                start = self.pool_offsets[name]
                inside = (self.mask_indices >= start) & (self.mask_indices < start + p.numel())
                slots = inside.nonzero().squeeze(1)
                if len(slots):
                    self._routes[name] = (self.mask_indices[slots] - start, slots)
        return self._routes

    def mask(self) -> dict[str, torch.Tensor]:
        """M as boolean tensors shaped like θ₀, for the tensors with a selected entry."""
        masks = {}
        for name, (positions, _) in self.routes().items():
            m = torch.zeros(self.pool[name].numel(), dtype=torch.bool, device=positions.device)
            m[positions] = True
            masks[name] = m.view_as(self.pool[name])
        return masks

    def deltas(self) -> dict[str, torch.Tensor]:
        """Dense Δ = M ⊙ Δ per tensor (for merging and analysis only)."""
        return {name: torch.zeros(self.pool[name].numel(), device=self.mask_values.device)
                .index_add(0, positions, self.mask_values[slots]).view_as(self.pool[name])
                for name, (positions, slots) in self.routes().items()}

    def reparametrized_weights(self) -> dict[str, torch.Tensor]:
        weights = {}
        probes = ({} if self.id3 is None
                  else self.id3.probes_for_forward(self.mask_indices, self.training))
        for name, p in self.pool.items():
            flat = p.reshape(-1)
            if name in probes:
                flat = flat + probes[name]  # ID3: θ₀ + 0, the 0 receives ∂L/∂θ for every entry
            route = self.routes().get(name)
            if route is not None:
                positions, slots = route
                flat = flat.index_add(0, positions, self.mask_values[slots])  # θ₀ + M⊙Δ: (n,)
            if name in probes or route is not None:
                weights[name] = flat.view_as(p)
        return weights

    # --- ID3: grow the mask during training --------------------------------------------
    def probe_tensors(self) -> list[torch.Tensor]:
        """ID3's dense gradient holders while it selects (for memory accounting)."""
        return self.id3.probe_tensors() if self.id3 is not None else []

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """ID3: after step t < T, unmask the next K/T entries of largest H(θ)."""
        if self.id3 is not None and self.id3.unmask(self.mask_indices, self.mask_values,
                                                    step, total_steps):
            self._routes = None

    # --- saving: indices + values --------------------------------------------------------
    def adapter_state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        return {"mask_indices": self.mask_indices, "mask_values": self.mask_values.detach()}

    def load_adapter_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Saved indices replace the freshly chosen ones: the file is the mask."""
        super().load_adapter_state_dict(tensors)
        bad = (self.mask_indices >= self.pool_size) | (self.mask_indices < -1)
        if bad.any():
            raise ValueError("mask_indices point outside the parameter pool: was the adapter "
                             "saved with other target_modules/blocks or another base size?")
        chosen = self.mask_indices[self.mask_indices >= 0]
        if len(chosen.unique()) != len(chosen):
            raise ValueError("mask_indices name the same entry twice, which no selector "
                             "produces: the adapter file was edited or damaged; save it again")
        self._routes = None
        if self.id3 is not None:
            self.id3.drop_probes()


# --------------------------------------------------------------------------------------
# Presets for the command line
# --------------------------------------------------------------------------------------
PRESETS = {
    "full": lambda: FullFinetuneConfig(),
    "head_only": lambda: HeadOnlyConfig(top_layers=1),
    "bitfit": lambda: BitFitConfig(),
    "fish": lambda: MaskConfig(selector="fisher", budget=0.005, task="sentiment"),
    "pafi": lambda: MaskConfig(selector="pafi", budget=0.005),
    "random_mask": lambda: MaskConfig(selector="random", budget=0.005),
    "id3": lambda: MaskConfig(selector="id3", budget=0.005),
}
# The AdamW rate each preset fine-tunes at, chosen by sentiment runs on `small` (150 steps,
# batch 16): full fine-tuning and the head move many weights and take less than LoRA's 3e-3;
# BitFit and the sparse masks move few entries, each carrying more of the update.
LEARNING_RATES = {"full": 1e-3, "head_only": 1e-3, "bitfit": 1e-2, "fish": 3e-3, "pafi": 1e-2,
                  "random_mask": 1e-2, "id3": 1e-2}

__all__ = ["FullFinetuneConfig", "FullFinetuneModel", "HeadOnlyConfig", "HeadOnlyModel",
           "BitFitConfig", "BitFitModel", "MaskConfig", "MaskModel", "DeltaModel",
           "DenseDeltaModel", "compute_fisher", "candidate_parameters", "id3_importance",
           "select_smallest_magnitude", "select_largest", "select_random", "mask_size",
           "select_largest_change", "VALID_BIASES", "SELECTORS", "PRESETS"]
