"""Every PEFT method, one file each; `base.py` holds what they share.

Importing this package registers every method with `get_peft_model` / `from_pretrained`.
`PRESETS` maps a method name to a default config, for the command line
(`python -m minipeft finetune --method lora`) and for notebooks that compare methods;
`learning_rate(name)` is the AdamW rate the command line uses for it, kept beside the preset
in its method file.

    re-parameterization   lora (rsLoRA, LoRA+, multi-adapter, weighted merge), compose
                          (LoraHub), dora, adalora, qlora, monteclora, intrinsic
    additive              adapters (Houlsby, Pfeiffer, parallel, input/output), ia3,
                          prompts (soft prompt, prefix, deep prompt), spot
    selective             selective (full, head-only, BitFit, FISH / PaFi / random / ID3 masks),
                          masks (how those masks are chosen: Fisher information, |θ₀|, ID3)
"""
from minipeft.methods import (adalora, adapters, dora, ia3, intrinsic, lora, monteclora,
                              prompts, qlora, selective)
from minipeft.methods.adalora import AdaLoraConfig, AdaLoraModel
from minipeft.methods.adapters import AdapterConfig, AdapterModel
from minipeft.methods.base import (PeftConfig, PeftModel, TunerLayer, VALID_TARGETS,
                                   find_targets, get_peft_model, register_method,
                                   replace_module)
from minipeft.methods.compose import compose, lorahub_search
from minipeft.methods.dora import DoraConfig, DoraModel
from minipeft.methods.ia3 import IA3Config, IA3Model
from minipeft.methods.intrinsic import IntrinsicConfig, IntrinsicModel
from minipeft.methods.lora import LoraConfig, LoraModel, loraplus_param_groups
from minipeft.methods.monteclora import MonteCLoraConfig, MonteCLoraModel
from minipeft.methods.prompts import (DeepPromptConfig, DeepPromptModel, PrefixTuningConfig,
                                      PrefixTuningModel, PromptTuningConfig, PromptTuningModel)
from minipeft.methods.qlora import QLoraConfig, QLoraModel
from minipeft.methods.selective import (BitFitConfig, BitFitModel, FullFinetuneConfig,
                                        FullFinetuneModel, HeadOnlyConfig, HeadOnlyModel,
                                        MaskConfig, MaskModel)

# Each method file keeps its presets and, beside them, the AdamW rate each one fine-tunes at.
PRESETS: dict = {}
LEARNING_RATES: dict[str, float] = {}
for _module in (lora, dora, adalora, qlora, monteclora, adapters, ia3, prompts, selective,
                intrinsic):
    if _module.PRESETS.keys() != _module.LEARNING_RATES.keys():
        raise RuntimeError(f"{_module.__name__}: PRESETS and LEARNING_RATES must name the same "
                           f"presets, not {sorted(_module.PRESETS)} and "
                           f"{sorted(_module.LEARNING_RATES)}; give every preset its rate")
    PRESETS.update(_module.PRESETS)
    LEARNING_RATES.update(_module.LEARNING_RATES)


def learning_rate(preset: str) -> float:
    """The AdamW rate a preset fine-tunes at (LEARNING_RATES in its method file)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown method {preset!r}; choose from {sorted(PRESETS)}")
    return LEARNING_RATES[preset]


__all__ = [
    "PeftConfig", "PeftModel", "TunerLayer", "VALID_TARGETS", "PRESETS", "find_targets",
    "get_peft_model", "register_method", "replace_module", "learning_rate",
    "LoraConfig", "LoraModel", "loraplus_param_groups", "compose", "lorahub_search",
    "DoraConfig", "DoraModel", "AdaLoraConfig", "AdaLoraModel", "QLoraConfig", "QLoraModel",
    "MonteCLoraConfig", "MonteCLoraModel", "IntrinsicConfig", "IntrinsicModel",
    "AdapterConfig", "AdapterModel", "IA3Config", "IA3Model", "PromptTuningConfig",
    "PromptTuningModel", "PrefixTuningConfig", "PrefixTuningModel", "DeepPromptConfig",
    "DeepPromptModel", "FullFinetuneConfig", "FullFinetuneModel", "HeadOnlyConfig",
    "HeadOnlyModel", "BitFitConfig", "BitFitModel", "MaskConfig", "MaskModel",
]
