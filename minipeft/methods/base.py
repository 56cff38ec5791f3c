"""The machinery every PEFT method shares.

A PEFT model is a frozen pretrained GPT plus a small trainable module φ. This file holds
everything that does not depend on *which* φ:

* `PeftConfig`: the base of every `<Name>Config` dataclass (target modules, which blocks).
* `get_peft_model(model, config)`: freeze the base, hand it to the method's `PeftModel`
  subclass, which attaches φ.
* `find_targets`: a target name such as "q" is matched in every selected block
  (`blocks.3.attn.q`); an unknown name is an error.
* `place_layers`: the one way a method puts its layers into the base. The method names its
  targets (with find_targets, or its own rule for adapters around sub-layers and blocks)
  and how to build the layer that replaces each; place_layers checks every target first
  (rank, tied head), then replaces them in order.
* `TunerLayer`: a frozen base module wrapped with φ; knows how to merge/unmerge/disable.
* `PeftModel`: forward, generate, print_trainable_parameters, save_pretrained /
  from_pretrained (only φ is saved), disable_adapter(), merge_and_unload().

Each method registers its config and model class with `register_method`, so
`get_peft_model` and `from_pretrained` can find them by the config's `peft_type`.

Saved adapter files name every tensor as the PeftModel's own `state_dict()` does, e.g.
`base_model.blocks.0.attn.q.lora_A` or `prompt`, except that a LoRA-family adapter's own
name ("default") is left out, so a file loads into an adapter of any name. Hugging Face
peft names its tensors the same way (`base_model.model.…lora_A.weight`, no adapter name).
"""
from __future__ import annotations

import contextlib
import json
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn as nn

from minipeft.checks import (check_non_negative_int, check_positive_int, is_finite_number,
                             is_int)
from minipeft.files import (atomic_directory, read_json_object, read_safetensors,
                            safetensors_bytes, sha256)
from minipeft.model import GPT, generate_tokens

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# Written into every adapter_config.json; a later change of the file layout bumps it and
# migrates older files explicitly instead of guessing.
FORMAT_VERSION = 1
RESAVE_HINT = "save the adapter again with save_pretrained()"


class CannotMergeError(RuntimeError):
    """The one error for "this adapter cannot be folded into the base weights"."""

# target name → path inside a Block; "head" is the (tied) LM head outside the blocks.
BLOCK_MODULES = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o",
                 "fc": "mlp.fc", "proj": "mlp.proj"}
VALID_TARGETS = (*BLOCK_MODULES, "head")


@dataclass
class PeftConfig:
    """Fields every method has. Subclasses add their own hyper-parameters.

    target_modules: which Linear layers get φ (names from VALID_TARGETS), per block.
    layers_to_transform: which blocks, as in peft: None = every block, an int i = block i
        only, a list = those block indices.
    top_layers: the top N blocks (n_layer − N … n_layer − 1). This one is minipeft's own
        name, not peft's: "tune the last few blocks" is the classic transfer-learning choice
        (Donahue et al., 2014), and as a count it does not depend on the depth of the model.
    Give at most one of the two.
    """

    peft_type: ClassVar[str] = "BASE"
    # Whether top_layers=0 (no block at all) makes sense: only for head-only tuning.
    allows_zero_top_layers: ClassVar[bool] = False
    target_modules: list[str] | None = None
    layers_to_transform: int | list[int] | None = None
    top_layers: int | None = None

    def __post_init__(self):
        check_block_choice(self.layers_to_transform, self.top_layers,
                           self.allows_zero_top_layers)

    def chooses_blocks(self) -> bool:
        """Whether the config narrows the blocks (otherwise every block is meant)."""
        return self.layers_to_transform is not None or self.top_layers is not None

    def to_dict(self) -> dict:
        return {"peft_type": self.peft_type, **asdict(self)}

    @staticmethod
    def from_dict(d: dict) -> "PeftConfig":
        """The config saved as `d`: every field present, each of its declared type.

        Nothing is defaulted: a missing field would silently take today's default, which
        may not be what the adapter was trained with.
        """
        d = dict(d)
        peft_type = d.pop("peft_type", None)
        if peft_type not in METHODS:
            raise ValueError(f"unknown peft_type {peft_type!r}; known: {sorted(METHODS)}")
        config_cls = METHODS[peft_type][0]
        names = [f.name for f in fields(config_cls)]
        unknown = sorted(set(d) - set(names))
        missing = [n for n in names if n not in d]
        if unknown or missing:
            raise ValueError(f"{config_cls.__name__}: "
                             + "; ".join(part for part in (
                                 f"missing fields {missing}" if missing else "",
                                 f"unknown fields {unknown}" if unknown else "") if part))
        check_field_types(config_cls, d)
        return config_cls(**d)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON-style value has the declared type (bool is not an int or float)."""
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if hint is float:
        return is_finite_number(value)
    if hint is str:
        return isinstance(value, str)
    raise TypeError(f"no type check for {hint!r}; add one to minipeft.methods.base._matches")


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def check_field_types(config_cls: type, values: dict) -> None:
    """One ValueError listing every field whose value is not of its declared type.

    A float must be finite; "false" is not a bool; "qv" is not a list of names.
    """
    hints = typing.get_type_hints(config_cls)
    wrong = [f"{name}={values[name]!r} (expected {_type_name(hints[name])})"
             for name in (f.name for f in fields(config_cls))
             if name in values and not _matches(values[name], hints[name])]
    if wrong:
        raise ValueError(f"{config_cls.__name__}: wrong type for " + ", ".join(wrong))


# peft_type → (config class, PeftModel subclass); filled by register_method.
METHODS: dict[str, tuple[type[PeftConfig], type["PeftModel"]]] = {}


def register_method(config_cls: type[PeftConfig]):
    """Class decorator: `@register_method(LoraConfig) class LoraModel(PeftModel): ...`."""

    def decorator(model_cls):
        METHODS[config_cls.peft_type] = (config_cls, model_cls)
        model_cls.config_class = config_cls
        return model_cls

    return decorator


# --------------------------------------------------------------------------------------
# Finding and replacing modules
# --------------------------------------------------------------------------------------
def check_block_choice(layers_to_transform: Any, top_layers: Any,
                       allows_zero_top_layers: bool = False) -> None:
    """One ValueError unless at most one block selection is given and it is well formed."""
    if layers_to_transform is not None and top_layers is not None:
        raise ValueError(f"layers_to_transform={layers_to_transform!r} and "
                         f"top_layers={top_layers!r}: give one of them, not both "
                         "(layers_to_transform picks block indices as in peft; top_layers "
                         "counts blocks from the top); set the other to None")
    if top_layers is not None:
        check_count = check_non_negative_int if allows_zero_top_layers else check_positive_int
        check_count(top_layers, "top_layers")
    if layers_to_transform is None:
        return
    indices = [layers_to_transform] if is_int(layers_to_transform) else layers_to_transform
    if (not isinstance(indices, list) or not indices
            or not all(is_int(i) and i >= 0 for i in indices)
            or len(set(indices)) != len(indices)):
        raise ValueError(f"layers_to_transform must be a block index (an int ≥ 0) or a "
                         f"non-empty list of distinct block indices, got "
                         f"{layers_to_transform!r}; None selects every block (peft reads an "
                         "empty list that way, minipeft asks for None)")


def resolve_layers(layers_to_transform: int | list[int] | None, top_layers: int | None,
                   n_layer: int) -> list[int]:
    """The selected block indices, ascending: None and None → every block; an int i in
    layers_to_transform → block i (peft's meaning); a list → those blocks; top_layers=N →
    the top N blocks."""
    check_block_choice(layers_to_transform, top_layers)
    if top_layers is not None:
        if top_layers > n_layer:
            raise ValueError(f"top_layers={top_layers}: the model has {n_layer} blocks; "
                             f"give 1..{n_layer}")
        return list(range(n_layer - top_layers, n_layer))
    if layers_to_transform is None:
        return list(range(n_layer))
    indices = [layers_to_transform] if is_int(layers_to_transform) else layers_to_transform
    if any(i >= n_layer for i in indices):
        raise ValueError(f"layers_to_transform={layers_to_transform!r}: the model has "
                         f"{n_layer} blocks, numbered 0..{n_layer - 1}")
    return sorted(indices)


def find_targets(model: GPT, target_modules: list[str] | None,
                 layers_to_transform: int | list[int] | None = None,
                 top_layers: int | None = None) -> list[tuple[str, nn.Module]]:
    """Qualified names and modules for `target_modules` in the selected blocks.

    >>> [n for n, _ in find_targets(gpt, ["q", "v"], top_layers=1)]   # top block only
    ['blocks.3.attn.q', 'blocks.3.attn.v']
    >>> [n for n, _ in find_targets(gpt, ["q"], layers_to_transform=1)]   # block 1, as in peft
    ['blocks.1.attn.q']
    """
    if not target_modules:
        raise ValueError(f"target_modules is empty; choose from {list(VALID_TARGETS)}")
    unknown = [t for t in target_modules if t not in VALID_TARGETS]
    if unknown:
        raise ValueError(f"unknown target module(s) {unknown}; valid names are "
                         f"{list(VALID_TARGETS)} (matched in every selected block)")
    found = []
    for i in resolve_layers(layers_to_transform, top_layers, len(model.blocks)):
        for t in target_modules:
            if t != "head":
                name = f"blocks.{i}.{BLOCK_MODULES[t]}"
                found.append((name, model.get_submodule(name)))
    if "head" in target_modules:
        found.append(("head", model.head))
    return found


def saved_key(module_name: str, tensor_name: str) -> str:
    """The name a layer's tensor has in saved files: its name in the PeftModel's state_dict.

    module_name is relative to the base GPT ('blocks.0.attn.q'), as tuner_layers() gives it.
    """
    return f"base_model.{module_name}.{tensor_name}"


def replace_module(root: nn.Module, qualified_name: str, new: nn.Module) -> None:
    """Put `new` where `qualified_name` (e.g. 'blocks.0.attn.q') is inside `root`."""
    parent_name, _, child = qualified_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


# --------------------------------------------------------------------------------------
# A wrapped layer
# --------------------------------------------------------------------------------------
class TunerLayer(nn.Module):
    """A frozen `base_layer` with trainable φ around it.

    Subclasses implement `forward`, and where the method allows it `delta_weight()` (the
    dense ΔW used only for merging and analysis, never during training). A layer that
    cannot merge says why in `cannot_merge_reason()`.
    """

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.disabled = False  # True inside PeftModel.disable_adapter(): behave like the base
        self.merged = False

    def cannot_merge_reason(self) -> str | None:
        """None if merge() can fold φ into the base weight, else the reason it cannot."""
        if (type(self).delta_weight is TunerLayer.delta_weight
                and type(self).merge is TunerLayer.merge):
            return f"{type(self).__name__} has no weight update ΔW to add to the base weight"
        return None

    def delta_weight(self) -> torch.Tensor:
        raise CannotMergeError(f"{type(self).__name__} cannot be merged into the base weight")

    def merge(self) -> None:
        """W ← W₀ + ΔW, in place on the base weight (the one sanctioned modification)."""
        if self.merged:
            raise RuntimeError(f"{type(self).__name__} is already merged; call unmerge() first")
        reason = self.cannot_merge_reason()
        if reason:
            raise CannotMergeError(reason)
        with torch.no_grad():
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = True

    def unmerge(self) -> None:
        """W ← W − ΔW, restoring W₀ (up to floating-point rounding)."""
        if not self.merged:
            raise RuntimeError(f"{type(self).__name__} is not merged; nothing to unmerge")
        with torch.no_grad():
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = False


def unwrapped(module: nn.Module) -> nn.Module:
    """The frozen base module inside a TunerLayer (the module itself if it is not wrapped)."""
    return module.base_layer if isinstance(module, TunerLayer) else module


def place_layers(model: GPT, targets: list[tuple[str, nn.Module]],
                 make_layer: Callable[[str, nn.Module], nn.Module], *,
                 rank: int | None = None, rank_name: str = "r",
                 allow_tied_head: bool = False, method: str = "this method") -> None:
    """Replace every target (qualified name, module) of `model` by make_layer(name, module).

    The targets come from find_targets (Linear layers) or from the method's own rule
    (adapters wrap attention/MLP sub-layers or whole blocks). make_layer is called in the
    order of `targets`, so random initial values are drawn in that order; it may return
    the module it was given (a LoraLayer receiving a second adapter).

    Every target is checked before the first is replaced, so a refusal changes nothing:
    * rank: a rank-r update of a d_out × d_in weight needs r ≤ min(d_out, d_in) (a higher
      rank adds parameters but no expressiveness);
    * the LM head shares its weight with the token embedding E (weight tying): a method
      whose update is merged into that weight would change the input embeddings too, so it
      is refused unless allow_tied_head (LoRA keeps such a head unmerged).
    """
    for name, module in targets:
        weight = getattr(unwrapped(module), "weight", None)
        if weight is model.tok_emb.weight and not allow_tied_head:
            raise ValueError(f"{method} on 'head' is not supported: head.weight is the tied "
                             "token embedding E, so merging an update into it would change "
                             "the input embeddings too; leave 'head' out of target_modules")
        if rank is not None and rank > min(weight.shape):
            d_out, d_in = weight.shape
            raise ValueError(f"{rank_name}={rank} is larger than min(d_out, d_in) = "
                             f"min({d_out}, {d_in}) at {name}: a higher rank adds parameters "
                             f"but no expressiveness; choose {rank_name} ≤ {min(d_out, d_in)}")
    for name, module in targets:
        replace_module(model, name, make_layer(name, module))


# --------------------------------------------------------------------------------------
# The PEFT model
# --------------------------------------------------------------------------------------
def get_peft_model(model: GPT, config: PeftConfig, adapter_name: str = "default") -> "PeftModel":
    """Freeze `model` and attach the trainable module φ described by `config`."""
    if type(config).peft_type not in METHODS:
        raise ValueError(f"{type(config).__name__} is not a registered PEFT config; "
                         f"known: {sorted(METHODS)}")
    check_field_types(type(config), asdict(config))
    check_plain_base(model)
    model_cls = METHODS[type(config).peft_type][1]
    # φ is initialised on the CPU (the same numbers on every device), then joins the base.
    return model_cls(model, config, adapter_name).to(model.device)


def check_plain_base(model: nn.Module) -> None:
    """A PEFT model is built on a base GPT whose layers carry no adapter yet.

    Methods that only add inputs or re-parametrise weights in the forward pass (soft
    prompts, masks) leave the base untouched, so several of them may share one base;
    methods that wrap layers change the base itself, so a second one on top would rewrite
    the first model's adapter.
    """
    fix = ("start from a fresh base (load_pretrained() again, or copy.deepcopy(base) before "
           "the first get_peft_model); to put a second LoRA adapter on the same model use "
           "peft_model.add_adapter(name, config)")
    if isinstance(model, PeftModel):
        raise ValueError(f"get_peft_model needs the base GPT, not a {type(model).__name__}; "
                         + fix)
    if any(isinstance(m, TunerLayer) for m in model.modules()):
        raise ValueError("this base model already carries an adapter in its layers (a "
                         "PeftModel was built on it, and a second one would rewrite the "
                         "first one's adapter); " + fix)


class PeftModel(nn.Module):
    """Frozen GPT + φ. Subclasses implement `inject(config, adapter_name)`.

    Methods that change the *input* (soft prompts, prefixes) override `forward`; methods
    that wrap layers only need `inject`, which hands its layers to `place_layers`.
    """

    config_class: ClassVar[type[PeftConfig]] = PeftConfig  # set by register_method

    def __init__(self, base_model: GPT, config: PeftConfig, adapter_name: str = "default"):
        super().__init__()
        self.check_config(config)
        for p in base_model.parameters():
            p.requires_grad_(False)  # rule of the house: the base is frozen
        self.base_model = base_model
        self.configs: dict[str, PeftConfig] = {adapter_name: config}
        self.active_adapter = adapter_name
        self.adapters_disabled = False
        self.unloaded = False  # True after merge_and_unload(): φ lives in the base now
        self.inject(config, adapter_name)

    def check_config(self, config: PeftConfig) -> None:
        """One TypeError unless `config` is this method's config class (or a subclass)."""
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")

    # --- subclass hooks -------------------------------------------------------------
    def inject(self, config: PeftConfig, adapter_name: str) -> None:
        raise NotImplementedError

    def adapter_state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        """What `save_pretrained` writes: by default every trainable tensor (φ)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    # --- running ----------------------------------------------------------------------
    @property
    def config(self) -> PeftConfig:
        return self.configs[self.active_adapter]

    @property
    def model_config(self):
        return self.base_model.config

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def new_cache(self):
        return self.base_model.new_cache()

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, eos_id: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Same decoding loop as GPT.generate, driven by this model's forward (so φ acts)."""
        return generate_tokens(self, idx, max_new_tokens, temperature, top_k, eos_id,
                               use_cache, generator)

    def tuner_layers(self) -> Iterator[tuple[str, TunerLayer]]:
        for name, module in self.base_model.named_modules():
            if isinstance(module, TunerLayer):
                yield name, module

    @property
    def merged(self) -> bool:
        """True while φ is folded into the base weights (merge() without unmerge()).

        Read-only: merge() and unmerge() are the only ways to change it."""
        return any(m.merged for _, m in self.tuner_layers())

    def check_usable(self, action: str) -> None:
        """One clear error if φ no longer exists apart from the base (merge_and_unload)."""
        if self.unloaded:
            raise RuntimeError(f"cannot {action}: merge_and_unload() folded this adapter into "
                               "the base and removed it; save or use the returned GPT, or "
                               "load the adapter again with from_pretrained()")

    @contextlib.contextmanager
    def disable_adapter(self):
        """Inside the `with` block the model behaves exactly like the frozen base."""
        self.check_usable("disable the adapter")
        if self.merged:
            raise RuntimeError("disable_adapter() needs unmerged adapters; call unmerge() first")
        layers = [m for _, m in self.tuner_layers()]
        self.adapters_disabled = True
        for m in layers:
            m.disabled = True
        try:
            yield self
        finally:
            self.adapters_disabled = False
            for m in layers:
                m.disabled = False

    def cannot_merge_reason(self) -> str | None:
        """None if every part of φ can fold into the base weights, else why not."""
        layers_by_reason: dict[str, list[str]] = {}
        for name, m in self.tuner_layers():
            if reason := m.cannot_merge_reason():
                layers_by_reason.setdefault(reason, []).append(name)
        return "; ".join(f"{', '.join(names)}: {reason}"
                         for reason, names in layers_by_reason.items()) or None

    def check_can_merge(self) -> None:
        """Check every layer *before* any is merged, so a refusal leaves the model as it was."""
        self.check_usable("merge")
        if self.adapters_disabled:
            raise RuntimeError("merge() inside disable_adapter() would change the model the "
                               "`with` block promises to leave alone; merge after the block")
        reason = self.cannot_merge_reason()
        if reason:
            raise CannotMergeError(f"{type(self).__name__} cannot be merged ({reason}); "
                                   "nothing was changed")

    def merge(self) -> None:
        self.check_can_merge()
        for _, m in self.tuner_layers():
            m.merge()

    def unmerge(self) -> None:
        self.check_usable("unmerge")
        for _, m in self.tuner_layers():
            m.unmerge()

    def merge_and_unload(self) -> GPT:
        """Fold φ into the weights and return a plain GPT (same outputs, base speed)."""
        self.check_can_merge()
        for name, m in list(self.tuner_layers()):
            if not m.merged:
                m.merge()
            replace_module(self.base_model, name, m.base_layer)
        return self.unload()

    def unload(self) -> GPT:
        """Mark φ as gone and hand back the base (a plain GPT again)."""
        self.unloaded = True
        return self.base_model

    # --- counting ---------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def count_parameters(self) -> tuple[int, int]:
        """(trainable, total) unique parameter entries; total includes the frozen base."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> str:
        trainable, total = self.count_parameters()
        line = f"trainable: {trainable:,} / {total:,} ({100 * trainable / total:.2f}%)"
        print(line)
        return line

    # --- saving and loading -------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write adapter_config.json + adapter_model.safetensors (φ only, never the base).

        The folder appears in one step (minipeft.files.atomic_directory): a run killed while
        saving leaves the previous adapter there, complete. The config records a SHA-256 of
        the weights file, so a damaged or swapped weights file is caught on loading.
        Hugging Face peft's file format is written by minipeft.gpt2.save_peft_adapter.
        """
        self.check_usable("save the adapter")
        directory = Path(directory)
        check_save_target(directory, self.config.peft_type)
        tensors = self.adapter_state_dict()
        if not tensors:
            raise RuntimeError(f"{type(self).__name__} has no adapter tensors to save")
        weights = safetensors_bytes(tensors)
        meta = {"format_version": FORMAT_VERSION, **self.config.to_dict(),
                "base_model_config": self.model_config.to_dict(),
                "weights_sha256": sha256(weights)}
        with atomic_directory(directory) as tmp:
            (tmp / WEIGHTS_NAME).write_bytes(weights)
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, base_model: GPT, directory: str | Path) -> "PeftModel":
        """Rebuild the PEFT model saved in `directory` on top of `base_model`.

        A Hugging Face peft folder is refused with a pointer to minipeft.gpt2.load_peft_adapter.
        """
        config, tensors = read_adapter(directory, base_model.config.to_dict())
        model_cls = METHODS[config.peft_type][1]
        if not issubclass(model_cls, cls):
            raise ValueError(f"{directory} holds a {config.peft_type} adapter, which "
                             f"{cls.__name__}.from_pretrained cannot load; use "
                             f"{model_cls.__name__}.from_pretrained or PeftModel.from_pretrained")
        peft = get_peft_model(base_model, config)
        peft.load_adapter_state_dict(tensors)
        return peft

    def load_adapter_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy saved φ in, checking that names and shapes match exactly."""
        params = dict(self.named_parameters()) | dict(self.named_buffers())
        copy_adapter_tensors({name: params[name] for name in self.adapter_state_dict()}, tensors)


def copy_adapter_tensors(targets: dict[str, torch.Tensor],
                         tensors: dict[str, torch.Tensor]) -> None:
    """targets[name] ← tensors[name] for every name; names, shapes and dtypes must match."""
    missing, unexpected = set(targets) - set(tensors), set(tensors) - set(targets)
    if missing or unexpected:
        raise ValueError(f"adapter tensors do not match this model: missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    for name, value in tensors.items():
        target = targets[name]
        if target.shape != value.shape:
            raise ValueError(f"adapter tensor {name} has shape {tuple(value.shape)}, "
                             f"this model expects {tuple(target.shape)}: was it "
                             "trained on a base of a different size?")
        if target.dtype.is_floating_point != value.dtype.is_floating_point or (
                not target.dtype.is_floating_point and target.dtype != value.dtype):
            raise ValueError(f"adapter tensor {name} is {value.dtype}, this model expects "
                             f"{target.dtype}; {RESAVE_HINT}")
        if value.dtype.is_floating_point and not torch.isfinite(value).all():
            raise ValueError(f"adapter tensor {name} holds NaN or infinite values; the "
                             "training run that wrote it diverged (try a lower learning rate)")
    with torch.no_grad():
        for name, value in tensors.items():
            targets[name].copy_(value)


def is_peft_config(meta: dict) -> bool:
    """Hugging Face peft writes these keys into every adapter_config.json; minipeft does not."""
    return "base_model_name_or_path" in meta or "peft_version" in meta


def read_adapter_config(directory: Path) -> dict:
    """The saved adapter_config.json, after checking that both saved files are there."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder; give the folder that "
                                "save_pretrained() wrote")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} is missing; save_pretrained() "
                                    "writes both adapter_config.json and the weights")
    return read_json_object(directory / CONFIG_NAME, RESAVE_HINT)


def adapter_config_from_meta(meta: dict, base_config: dict, directory: Path) -> PeftConfig:
    """The PeftConfig of a saved adapter, checked strictly against the format and the base."""
    if is_peft_config(meta):
        raise ValueError(f"{directory} holds a Hugging Face peft adapter, not a minipeft "
                         "one; load it with minipeft.gpt2.load_peft_adapter(base_model, "
                         "directory)")
    meta = dict(meta)
    version = meta.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ValueError(f"{directory / CONFIG_NAME} has format_version {version!r}; this "
                         f"minipeft reads format {FORMAT_VERSION}; {RESAVE_HINT} with this "
                         "version")
    for key in ("base_model_config", "weights_sha256"):
        if key not in meta:
            raise ValueError(f"{directory / CONFIG_NAME} has no {key!r}; {RESAVE_HINT}")
    check_same_base(meta.pop("base_model_config"), base_config, directory)
    meta.pop("weights_sha256")
    try:
        return PeftConfig.from_dict(meta)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{directory / CONFIG_NAME}: {err}") from err


def read_adapter_weights(directory: Path, meta: dict) -> dict[str, torch.Tensor]:
    """The saved φ tensors, after checking them against the config's SHA-256."""
    tensors, data = read_safetensors(directory / WEIGHTS_NAME, RESAVE_HINT)
    if sha256(data) != meta["weights_sha256"]:
        raise ValueError(f"{directory / WEIGHTS_NAME} does not match the checksum in "
                         f"{CONFIG_NAME}: the file was changed or damaged after saving; "
                         + RESAVE_HINT)
    return tensors


def read_adapter(directory: str | Path, base_config: dict) -> tuple[PeftConfig, dict]:
    """(config, tensors) of a minipeft adapter folder, read strictly."""
    directory = Path(directory)
    meta = read_adapter_config(directory)
    config = adapter_config_from_meta(meta, base_config, directory)
    return config, read_adapter_weights(directory, meta)


def check_save_target(directory: Path, peft_type: str) -> None:
    """Refuse a save that would destroy something other than an older copy of this adapter."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"cannot save the adapter to {directory}: it is a file; give a "
                         "folder path")
    if not directory.is_dir():
        return
    others = sorted(p.name for p in directory.iterdir() if p.name not in (CONFIG_NAME,
                                                                          WEIGHTS_NAME))
    if others:
        raise ValueError(f"cannot save the adapter to {directory}: the folder holds other "
                         f"files ({others[:3]}) that saving would delete; give a new or "
                         "empty folder")
    if (directory / CONFIG_NAME).is_file():
        saved = read_json_object(directory / CONFIG_NAME,
                                 "delete the folder or save somewhere else").get("peft_type")
        if saved != peft_type:
            raise ValueError(f"cannot save a {peft_type} adapter to {directory}: it holds a "
                             f"{saved} adapter; save to another folder, or delete that one "
                             "first")


def check_same_base(saved: Any, current: dict, directory: Path) -> None:
    if not isinstance(saved, dict):
        raise ValueError(f"{directory / CONFIG_NAME}: base_model_config must be an object, "
                         f"got {saved!r}; {RESAVE_HINT}")
    keys = ("vocab_size", "n_layer", "n_head", "d_model", "d_ff")
    diff = {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}
    if diff:
        raise ValueError(f"the adapter in {directory} was trained on a different base model "
                         f"(saved vs this base: {diff}); load it into the base it came from")
