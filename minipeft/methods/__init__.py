"""Every PEFT method, one file each; `base.py` holds what they share.

Importing this package registers every method with `get_peft_model` / `from_pretrained`.
`PRESETS` maps a method name to a default config, for the command line
(`python -m minipeft finetune --method lora`) and for notebooks that compare methods;
`learning_rate(name)` is the AdamW rate the command line uses for it.

    re-parameterization   lora (rsLoRA, LoRA+, multi-adapter, weighted merge), compose
                          (LoraHub), dora, adalora, qlora, monteclora, intrinsic
    additive              adapters (Houlsby, Pfeiffer, parallel, input/output), ia3,
                          prompts (soft prompt, prefix, deep prompt), spot
    selective             selective (full, head-only, BitFit, FISH / PaFi / random / ID3 masks)
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

PRESETS: dict = {}
for _module in (lora, dora, adalora, qlora, monteclora, adapters, ia3, prompts, selective,
                intrinsic):
    PRESETS.update(_module.PRESETS)

# Methods whose few parameters each carry a lot of the update need a larger rate than
# LoRA's 3e-3 (scaling vectors, soft prompts, masks, a d-dimensional subspace); full
# fine-tuning and the reparameterized prefix MLP need a smaller one. Chosen by sentiment
# runs on `small` (150 steps, batch 16): at 3e-3 IA³, the soft prompt and the intrinsic
# subspace stay at chance and the prefix MLP stalls at the label prior.
DEFAULT_LR = 3e-3
LEARNING_RATES = {"ia3": 3e-2, "prompt": 3e-2, "deep_prompt": 3e-2, "prefix": 1e-3,
                  "intrinsic": 5e-2, "full": 1e-3, "head_only": 1e-3, "bitfit": 1e-2,
                  "pafi": 1e-2, "random_mask": 1e-2, "id3": 1e-2}


def learning_rate(preset: str) -> float:
    """The fine-tuning rate for a preset: LEARNING_RATES, else DEFAULT_LR (LoRA's)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown method {preset!r}; choose from {sorted(PRESETS)}")
    return LEARNING_RATES.get(preset, DEFAULT_LR)


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
