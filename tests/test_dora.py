"""Tests for DoRA (minipeft.methods.dora).

Independent references: a dense W' = m · (W₀ + sBA) / ‖W₀ + sBA‖ (row norms over d_in)
written here from the tensors, autograd of that dense function, hand-computed ΔM/ΔD.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from minipeft.methods.base import get_peft_model
from minipeft.methods.dora import (PRESETS, DoraConfig, DoraLayer, DoraModel,
                                   magnitude_direction_change, magnitude_direction_changes)
from minipeft.methods.lora import LoraConfig
from helpers import D, assert_preset_learns_sentiment, tiny_gpt, tokens

torch.set_num_threads(1)


def dora(config: DoraConfig, seed: int = 0):
    base = tiny_gpt(seed)
    return copy.deepcopy(base), get_peft_model(base, config)


def randomize(model: DoraModel, seed: int = 2) -> None:
    """Non-zero B and a magnitude away from ‖W₀‖, so every term of DoRA matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.lora_layers():
            layer.B.copy_(torch.randn(layer.B.shape, generator=g) * 0.3)
            layer.magnitude.mul_(1 + 0.5 * torch.rand(layer.magnitude.shape, generator=g))


def dense_dora_weight(w0, A, B, m, s, detach=False):
    """m · V / ‖V‖ per output row, V = W₀ + s B A; written out without the library."""
    V = w0 + s * B @ A
    norm = torch.sqrt((V ** 2).sum(dim=1, keepdim=True))  # one norm per output unit
    if detach:
        norm = norm.detach()
    return m[:, None] * V / norm


def test_magnitude_starts_at_the_row_norms_of_W0():
    reference, model = dora(DoraConfig(r=4, alpha=8))
    layer = model.base_model.blocks[0].attn.q
    w0 = reference.blocks[0].attn.q.weight
    assert layer.magnitude.shape == (w0.shape[0],)  # one per output unit (nn.Linear row)
    assert torch.allclose(layer.magnitude, torch.sqrt((w0 ** 2).sum(dim=1)))


def test_layer_forward_equals_the_dense_formula():
    reference, model = dora(DoraConfig(r=4, alpha=8, target_modules=["fc"]))
    randomize(model)
    layer = model.base_model.blocks[1].mlp.fc
    base = reference.blocks[1].mlp.fc
    w = dense_dora_weight(base.weight, layer.A, layer.B, layer.magnitude, 8 / 4)
    x = torch.randn(5, D)
    assert torch.allclose(layer(x), x @ w.T + base.bias, atol=1e-5)


def test_model_forward_equals_a_gpt_with_dense_dora_weights():
    reference, model = dora(DoraConfig(r=2, alpha=4, target_modules=["q", "v", "o"],
                                       use_rslora=True))
    randomize(model)
    dense = copy.deepcopy(reference)
    with torch.no_grad():
        for name, layer in model.lora_layers():
            target = dense.get_submodule(name)
            target.weight.copy_(dense_dora_weight(target.weight, layer.A, layer.B,
                                                  layer.magnitude, 4 / 2 ** 0.5))
    x = tokens()
    assert torch.allclose(model(x).logits, dense(x).logits, atol=1e-5)


@pytest.mark.parametrize("detach", [True, False])
def test_gradients_match_the_dense_function_with_or_without_detached_norm(detach):
    reference, model = dora(DoraConfig(r=4, alpha=8, target_modules=["v"], detach_norm=detach))
    randomize(model)
    layer = model.base_model.blocks[0].attn.v
    x = torch.randn(6, D)
    layer(x).pow(2).sum().backward()
    A = layer.A.detach().clone().requires_grad_(True)
    B = layer.B.detach().clone().requires_grad_(True)
    m = layer.magnitude.detach().clone().requires_grad_(True)
    base = reference.blocks[0].attn.v
    w = dense_dora_weight(base.weight.detach(), A, B, m, 2.0, detach=detach)
    (x @ w.T + base.bias.detach()).pow(2).sum().backward()
    for mine, theirs in [(layer.A, A), (layer.B, B), (layer.magnitude, m)]:
        assert torch.allclose(mine.grad, theirs.grad, atol=1e-5)


def test_merge_keeps_logits_and_unmerge_restores_W0():
    reference, model = dora(DoraConfig(r=4, alpha=8, target_modules=["q", "v", "fc"]))
    randomize(model)
    x = tokens()
    expected = model(x).logits
    model.merge()
    assert torch.allclose(model(x).logits, expected, atol=1e-5)
    layer = model.base_model.blocks[0].attn.q
    w_dense = dense_dora_weight(reference.blocks[0].attn.q.weight, layer.A, layer.B,
                                layer.magnitude, 2.0)
    assert torch.allclose(layer.base_layer.weight, w_dense, atol=1e-6)
    model.unmerge()
    assert torch.allclose(model(x).logits, expected, atol=1e-5)
    assert torch.allclose(layer.base_layer.weight, reference.blocks[0].attn.q.weight, atol=1e-6)
    merged = model.merge_and_unload()
    assert torch.allclose(merged(x).logits, expected, atol=1e-5)


def test_trainable_count_is_lora_plus_one_magnitude_per_output():
    _, model = dora(DoraConfig(r=4, alpha=8, target_modules=["q", "fc"]))
    trainable, _ = model.count_parameters()
    per_block = 4 * (D + D) + D + 4 * (D + 4 * D) + 4 * D  # r(d_in + d_out) + d_out
    assert trainable == 2 * per_block


def test_magnitude_and_direction_change_by_hand():
    w0 = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    longer = torch.tensor([[6.0, 8.0], [1.0, 0.0]])  # row 0 doubles in length, same direction
    assert magnitude_direction_change(w0, longer) == pytest.approx((2.5, 0.0), abs=1e-6)
    turned = torch.tensor([[4.0, 3.0], [0.0, 1.0]])  # same lengths, new directions
    d_m, d_d = magnitude_direction_change(w0, turned)
    assert d_m == pytest.approx(0.0, abs=1e-6)
    assert d_d == pytest.approx(((1 - 24 / 25) + (1 - 0)) / 2, abs=1e-6)


def test_changes_of_a_dora_model_have_magnitude_m():
    reference, model = dora(DoraConfig(r=4, alpha=8, target_modules=["q"]))
    randomize(model)
    changes = magnitude_direction_changes(model)
    assert set(changes) == {"blocks.0.attn.q", "blocks.1.attn.q"}
    layer = model.base_model.blocks[1].attn.q
    w0 = reference.blocks[1].attn.q.weight
    expected_m = (layer.magnitude - w0.norm(dim=1)).abs().mean().item()
    V = w0 + 2.0 * layer.B @ layer.A
    expected_d = (1 - F.cosine_similarity(V, w0, dim=1)).mean().item()
    assert changes["blocks.1.attn.q"] == pytest.approx((expected_m, expected_d), abs=1e-5)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="positive integer"):
        DoraConfig(r=0)
    _, model = dora(DoraConfig(r=4))
    with pytest.raises(NotImplementedError, match="magnitude"):
        model.add_weighted_adapter(["default"], [1.0], "mix")
    with pytest.raises(TypeError, match="DoraConfig"):
        model.add_adapter("plain", LoraConfig(r=4))
    model.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        model.merge()


def test_preset_builds_a_dora_model():
    model = get_peft_model(tiny_gpt(), PRESETS["dora"]())
    assert all(isinstance(layer, DoraLayer) for _, layer in model.lora_layers())


@pytest.mark.slow
def test_small_learns_sentiment_above_chance():
    assert_preset_learns_sentiment("dora")
