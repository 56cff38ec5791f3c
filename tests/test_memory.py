"""Memory anatomy: weights, gradients, AdamW state and saved activations, measured.

The references are hand counts: AdamW keeps exp_avg and exp_avg_sq, two fp32 numbers per
trainable entry; a gradient is one fp32 number per trainable entry; a toy model's saved
tensors are known from its two operations.
"""
from types import SimpleNamespace

import pytest
import torch

from minipeft.analysis import mean_score_per_module, memory_anatomy
from minipeft.methods.base import get_peft_model
from minipeft.methods.intrinsic import IntrinsicConfig
from minipeft.methods.selective import (BitFitConfig, FullFinetuneConfig, HeadOnlyConfig,
                                        MaskConfig)
from minipeft.model import GPT, GPTConfig

torch.set_num_threads(1)


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, d_model=16))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (3, 10), generator=g), torch.randint(0, 64, (3, 10), generator=g)


CONFIGS = [FullFinetuneConfig(), HeadOnlyConfig(top_layers=1), BitFitConfig(),
           MaskConfig(selector="pafi", budget=0.02), MaskConfig(selector="random", budget=0.02),
           MaskConfig(selector="id3", budget=0.02), IntrinsicConfig(d=20),
           IntrinsicConfig(d=5, projection="dense")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{type(c).__name__}")
def test_adamw_state_is_two_fp32_numbers_per_trainable_entry(config):
    peft = get_peft_model(tiny_gpt(), config)
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    anatomy = memory_anatomy(peft, batch())
    assert anatomy.trainable_params == trainable
    assert anatomy.optimizer_bytes == 2 * 4 * trainable
    assert anatomy.trainable_weight_bytes == 4 * trainable
    base_bytes = 4 * tiny_gpt().num_parameters()
    assert anatomy.frozen_weight_bytes >= base_bytes  # θ₀, plus fixed buffers (indices, P)
    if isinstance(config, MaskConfig) and config.selector == "id3":
        # still selecting after step 1: a dense gradient for every entry, plus φ's own
        assert anatomy.gradient_bytes == base_bytes + 4 * trainable
    else:
        assert anatomy.gradient_bytes == 4 * trainable
    assert anatomy.activation_bytes > 0
    assert anatomy.training_bytes > anatomy.inference_bytes


def test_full_finetuning_of_a_plain_gpt_costs_four_copies_of_the_weights():
    model = tiny_gpt()
    for p in model.parameters():
        p.requires_grad_(True)
    anatomy = memory_anatomy(model, batch())
    n = model.num_parameters()
    # weights + gradients + exp_avg + exp_avg_sq = 4 × 4 bytes per parameter
    assert (anatomy.trainable_weight_bytes + anatomy.gradient_bytes
            + anatomy.optimizer_bytes) == 16 * n
    assert anatomy.frozen_weight_bytes == 0


def test_saved_activations_of_a_toy_model():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W = torch.nn.Parameter(torch.randn(8, 5))

        def forward(self, x, targets):
            y = x @ self.W  # keeps x for ∂L/∂W = xᵀ ∂L/∂y
            return SimpleNamespace(loss=(y * y).mean())  # keeps y

    x = torch.randn(4, 8)
    anatomy = memory_anatomy(Toy(), (x, x))
    assert anatomy.activation_bytes == x.nbytes + 4 * 5 * 4  # x and y (4×5 fp32)
    assert anatomy.gradient_bytes == 8 * 5 * 4


def test_measuring_leaves_the_model_untouched():
    peft = get_peft_model(tiny_gpt(), MaskConfig(selector="id3", budget=0.02))
    before = {n: t.clone() for n, t in peft.state_dict().items()}
    memory_anatomy(peft, batch())
    assert peft.n_selected == 0
    assert all(torch.equal(t, before[n]) for n, t in peft.state_dict().items())


def test_a_frozen_model_is_an_error():
    model = tiny_gpt()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        memory_anatomy(model, batch())


def test_mean_score_per_module_averages_weight_and_bias_together():
    scores = {"blocks.1.attn.q.weight": torch.full((4, 4), 2.0),
              "blocks.1.attn.q.bias": torch.full((4,), 7.0),
              "blocks.0.ln2.bias": torch.ones(4, dtype=torch.bool)}
    table, columns = mean_score_per_module(scores, n_layer=2)
    assert columns == ["q", "k", "v", "o", "fc", "proj", "ln1", "ln2"]
    assert table[1, 0] == (16 * 2.0 + 4 * 7.0) / 20
    assert table[0, 7] == 1.0
    assert table.sum() == table[1, 0] + table[0, 7]
