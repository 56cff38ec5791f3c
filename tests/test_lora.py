"""Tests for LoRA (minipeft.methods.lora) and the rank/spectra tools in minipeft.analysis.

Every check compares against an independent computation: the dense W₀x + (α/r)BAx built
here from the A, B tensors, a hand count r(d_in + d_out), torch.linalg.svd, closed forms.
"""
import copy
import math

import pytest
import torch

from minipeft.analysis import (delta_weights, effective_rank, singular_values,
                               subspace_similarity, subspace_similarity_grid)
from minipeft.methods import PRESETS as METHOD_PRESETS
from minipeft.methods.base import PeftModel, TunerLayer, get_peft_model
from minipeft.methods.lora import (PRESETS, LoraConfig, LoraLayer, LoraModel, add_low_rank,
                                   loraplus_param_groups)
from minipeft.model import GPT, GPTConfig
from minipeft.paths import CHECKPOINT_DIR
from minipeft.train import make_optimizer
from helpers import sentiment_answer_loss

torch.set_num_threads(1)
D, N_LAYER, VOCAB = 16, 3, 64
MODULE_PATHS = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o",
                "fc": "mlp.fc", "proj": "mlp.proj"}


def tiny_gpt(d_model: int = D, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=N_LAYER, n_head=2,
                         d_model=d_model))


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(seed))


def randomize_B(model: LoraModel, std: float = 0.3, seed: int = 2) -> None:
    """Give the active adapter a non-zero B (at init B = 0 and ΔW = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.lora_layers():
            if layer.active_adapter is not None:
                layer.B.copy_(torch.randn(layer.B.shape, generator=g) * std)


def dense_copy(base: GPT, model: LoraModel, scale: float) -> GPT:
    """A plain GPT with W = W₀ + scale·B A written in by hand from the adapter's tensors."""
    dense = copy.deepcopy(base)
    with torch.no_grad():
        for name, layer in model.lora_layers():
            if layer.active_adapter is not None:
                dense.get_submodule(name).weight += scale * layer.B @ layer.A
    return dense


def lora(config: LoraConfig, seed: int = 0):
    base = tiny_gpt(seed=seed)
    reference = copy.deepcopy(base)
    torch.manual_seed(seed + 10)
    return reference, get_peft_model(base, config)


# --------------------------------------------------------------------------------------
# The forward pass
# --------------------------------------------------------------------------------------
def test_layer_forward_is_W0x_plus_scaled_BAx():
    _, model = lora(LoraConfig(r=4, alpha=8, target_modules=["fc"]))
    randomize_B(model)
    layer = model.base_model.blocks[0].mlp.fc
    x = torch.randn(2, 5, D)
    W0, b = layer.base_layer.weight, layer.base_layer.bias
    A, B = layer.lora_A["default"], layer.lora_B["default"]
    expected = x @ W0.T + b + (8 / 4) * x @ (B @ A).T  # W₀x + b + (α/r) B A x, densely
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_the_fast_path_has_the_plain_sums_values_and_gradients():
    """add_low_rank (addmm, row-major Bᵀ) against result + code Bᵀ written out densely."""
    torch.manual_seed(0)
    result, code, B = (torch.randn(*shape, requires_grad=True)
                       for shape in [(2, 5, 12), (2, 5, 3), (12, 3)])
    fast = add_low_rank(result, code, B)
    plain = result + torch.einsum("btr,dr->btd", code, B)
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-6)
    weights = torch.randn_like(plain)
    fast_grads = torch.autograd.grad((fast * weights).sum(), (result, code, B))
    plain_grads = torch.autograd.grad((plain * weights).sum(), (result, code, B))
    for got, want in zip(fast_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_model_forward_equals_dense_weights():
    reference, model = lora(LoraConfig(r=4, alpha=16, target_modules=["q", "v", "fc"]))
    randomize_B(model)
    dense = dense_copy(reference, model, scale=16 / 4)
    torch.testing.assert_close(model(tokens()).logits, dense(tokens()).logits,
                               rtol=1e-5, atol=1e-5)


def test_B_is_zero_at_init_so_outputs_equal_the_base_exactly():
    reference, model = lora(LoraConfig(r=4, target_modules=["q", "k", "v", "o", "fc", "proj"]))
    for _, layer in model.lora_layers():
        assert torch.count_nonzero(layer.B) == 0 and torch.count_nonzero(layer.A) > 0
    assert torch.equal(model(tokens()).logits, reference(tokens()).logits)


def test_kaiming_and_gaussian_inits_of_A():
    _, kaiming = lora(LoraConfig(r=8, target_modules=["proj"], init="kaiming"))
    _, gaussian = lora(LoraConfig(r=8, target_modules=["proj"], init="gaussian"))
    k = 4 * D  # proj reads the 4d-wide MLP hidden layer
    A_k = torch.cat([layer.A.flatten() for _, layer in kaiming.lora_layers()])
    A_g = torch.cat([layer.A.flatten() for _, layer in gaussian.lora_layers()])
    assert A_k.abs().max() <= 1 / math.sqrt(k)  # U(−1/√k, 1/√k), nn.Linear's bound
    assert A_g.abs().max() > 1 / math.sqrt(k)  # a Gaussian has tails beyond that bound
    assert abs(A_g.std().item() * math.sqrt(k) - 1) < 0.1  # std 1/√k (1,536 samples)


def test_rslora_scales_by_alpha_over_sqrt_r():
    reference, model = lora(LoraConfig(r=4, alpha=6, target_modules=["q", "v"], use_rslora=True))
    randomize_B(model)
    dense = dense_copy(reference, model, scale=6 / math.sqrt(4))  # α/√r = 3, not α/r = 1.5
    torch.testing.assert_close(model(tokens()).logits, dense(tokens()).logits,
                               rtol=1e-5, atol=1e-5)
    assert LoraConfig(r=16, alpha=8, use_rslora=True).scaling == 2.0


def test_dropout_acts_on_the_lora_branch_only():
    _, model = lora(LoraConfig(r=4, alpha=8, dropout=0.5, target_modules=["q"]))
    layer = model.base_model.blocks[0].attn.q
    x = torch.randn(4, 6, D)
    model.train()
    # B = 0: whatever dropout does to the branch's input, the base path is untouched.
    assert torch.equal(layer(x), layer.base_layer(x))
    randomize_B(model)
    assert not torch.allclose(layer(x), layer(x))  # two dropout masks
    model.eval()
    expected = layer.base_layer(x) + 2 * x @ (layer.B @ layer.A).T
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# Trainable parameters
# --------------------------------------------------------------------------------------
def test_trainable_count_is_r_times_din_plus_dout_per_target(capsys):
    r = 4
    _, model = lora(LoraConfig(r=r, target_modules=["q", "v", "fc", "proj"]))
    # q, v: d → d; fc: d → 4d; proj: 4d → d — counted by hand, per block.
    per_block = r * (D + D) * 2 + r * (D + 4 * D) + r * (4 * D + D)
    trainable, total = model.count_parameters()
    assert trainable == N_LAYER * per_block
    base_total = sum(p.numel() for p in tiny_gpt().parameters())
    assert total == base_total + trainable
    line = model.print_trainable_parameters()
    assert f"{trainable:,}" in capsys.readouterr().out and f"{trainable:,}" in line


def test_top_layers_selects_the_top_blocks_and_layers_to_transform_indices():
    _, top = lora(LoraConfig(r=2, target_modules=["q", "v"], top_layers=1))
    assert [n for n, _ in top.lora_layers()] == ["blocks.2.attn.q", "blocks.2.attn.v"]
    _, one = lora(LoraConfig(r=2, target_modules=["q", "v"], layers_to_transform=1))
    assert [n for n, _ in one.lora_layers()] == ["blocks.1.attn.q", "blocks.1.attn.v"]
    _, listed = lora(LoraConfig(r=2, target_modules=["fc"], layers_to_transform=[0, 2]))
    assert [n for n, _ in listed.lora_layers()] == ["blocks.0.mlp.fc", "blocks.2.mlp.fc"]
    assert listed.count_parameters()[0] == 2 * 2 * (D + 4 * D)


@pytest.mark.parametrize("blocks, message", [
    (dict(layers_to_transform=[1], top_layers=1), "not both"),
    (dict(layers_to_transform=[]), "non-empty list"),
    (dict(layers_to_transform=[0, 0]), "distinct"),
    (dict(layers_to_transform=-1), "int ≥ 0"),
    (dict(layers_to_transform=[True]), "int ≥ 0"),
    (dict(top_layers=0), "top_layers must be a positive integer"),
    (dict(top_layers=[2]), "top_layers must be a positive integer"),
])
def test_bad_block_choices_are_rejected_when_the_config_is_made(blocks, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig(r=2, target_modules=["q"], **blocks)


@pytest.mark.parametrize("blocks, message", [
    (dict(layers_to_transform=3), "numbered 0..2"), (dict(layers_to_transform=[0, 5]), "0..2"),
    (dict(top_layers=4), "give 1..3")])
def test_blocks_beyond_the_model_are_rejected(blocks, message):
    with pytest.raises(ValueError, match=message):
        lora(LoraConfig(r=2, target_modules=["q"], **blocks))


def test_gradients_reach_only_phi():
    _, model = lora(LoraConfig(r=4, target_modules=["q", "v", "fc"]))
    randomize_B(model)
    x = tokens()
    model(x, x).loss.backward()
    for name, p in model.base_model.named_parameters():
        if ".lora_" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_base_weights_are_frozen():
    _, model = lora(LoraConfig(r=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


# --------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------
def test_merge_keeps_logits_and_unmerge_restores_W0():
    reference, model = lora(LoraConfig(r=4, alpha=8, target_modules=["q", "k", "v", "fc"]))
    randomize_B(model)
    before = model(tokens()).logits
    model.merge()
    torch.testing.assert_close(model(tokens()).logits, before, rtol=0, atol=1e-5)
    model.unmerge()
    for name, layer in model.lora_layers():
        W0 = reference.get_submodule(name).weight
        assert (layer.base_layer.weight - W0).abs().max() <= 1e-6


def test_merge_and_unload_returns_a_plain_gpt_with_the_same_logits():
    _, model = lora(LoraConfig(r=4, target_modules=["q", "v", "proj"]))
    randomize_B(model)
    before = model(tokens()).logits
    merged = model.merge_and_unload()
    assert type(merged) is GPT
    assert not any(isinstance(m, TunerLayer) for m in merged.modules())
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(tokens()).logits, before, rtol=0, atol=1e-5)


def test_merging_twice_is_an_error():
    _, model = lora(LoraConfig(r=4))
    model.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        model.merge()


def test_the_tied_head_cannot_be_merged():
    _, model = lora(LoraConfig(r=4, target_modules=["head"]))
    randomize_B(model)
    with pytest.raises(RuntimeError, match="token embedding"):
        model.merge()


# --------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------
def test_save_then_load_into_a_fresh_base_gives_identical_logits(tmp_path):
    reference, model = lora(LoraConfig(r=4, alpha=8, target_modules=["q", "v"], top_layers=2))
    randomize_B(model)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json",
                                                         "adapter_model.safetensors"]
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert sum(t.numel() for t in saved.values()) == 2 * 2 * 4 * (D + D)  # φ only
    loaded = PeftModel.from_pretrained(copy.deepcopy(reference), tmp_path)
    assert isinstance(loaded, LoraModel) and loaded.config == model.config
    assert torch.equal(loaded(tokens()).logits, model(tokens()).logits)


def test_loading_into_a_base_of_another_shape_is_an_error(tmp_path):
    _, model = lora(LoraConfig(r=4))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="different base model"):
        LoraModel.from_pretrained(tiny_gpt(d_model=32), tmp_path)
    with pytest.raises(ValueError, match="different base model"):
        get_peft_model(tiny_gpt(d_model=32), LoraConfig(r=4)).load_adapter(tmp_path, "other")


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------
def test_unknown_target_module_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown target module.*'q'.*'proj'"):
        get_peft_model(tiny_gpt(), LoraConfig(target_modules=["q_proj"]))


@pytest.mark.parametrize("r", [0, -3, 2.5])
def test_rank_must_be_a_positive_integer(r):
    with pytest.raises(ValueError, match="positive integer"):
        LoraConfig(r=r)


def test_rank_above_min_d_k_is_an_error():
    base = tiny_gpt()
    with pytest.raises(ValueError, match=r"min\(d_out, d_in\)"):
        get_peft_model(base, LoraConfig(r=D + 1, target_modules=["fc"]))  # fc: 16 → 64
    assert not any(isinstance(m, LoraLayer) for m in base.modules())  # nothing half-done


@pytest.mark.parametrize("bad", [dict(alpha=0), dict(dropout=1.0), dict(init="xavier")])
def test_other_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        LoraConfig(**bad)


# --------------------------------------------------------------------------------------
# Several adapters
# --------------------------------------------------------------------------------------
def two_adapters():
    reference, model = lora(LoraConfig(r=4, alpha=8, target_modules=["q", "v"]))
    randomize_B(model, seed=3)
    model.add_adapter("other", LoraConfig(r=2, alpha=2, target_modules=["q", "v"]))
    model.set_adapter("other")
    randomize_B(model, seed=4)
    model.set_adapter("default")
    return reference, model


def test_switching_adapters_switches_outputs():
    reference, model = two_adapters()
    first = dense_copy(reference, model, scale=8 / 4)(tokens()).logits
    torch.testing.assert_close(model(tokens()).logits, first, rtol=1e-5, atol=1e-5)
    model.set_adapter("other")
    second = dense_copy(reference, model, scale=2 / 2)(tokens()).logits
    torch.testing.assert_close(model(tokens()).logits, second, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, second)


def test_only_the_active_adapter_trains_and_is_saved(tmp_path):
    reference, model = two_adapters()
    model.set_adapter("other")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".other") for n in trainable)
    assert model.count_parameters()[0] == N_LAYER * 2 * 2 * (D + D)  # r = 2
    model.save_pretrained(tmp_path)
    loaded = LoraModel.from_pretrained(copy.deepcopy(reference), tmp_path)
    assert loaded.config.r == 2
    assert torch.equal(loaded(tokens()).logits, model(tokens()).logits)
    model.load_adapter(tmp_path, "again")
    model.set_adapter("again")
    assert torch.equal(model(tokens()).logits, loaded(tokens()).logits)


def test_delete_adapter():
    _, model = two_adapters()
    model.delete_adapter("other")
    assert model.adapter_names == ["default"]
    assert not any(".other" in n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="active adapter"):
        model.delete_adapter("default")
    with pytest.raises(ValueError, match="no adapter named"):
        model.set_adapter("other")


def test_deleting_the_only_adapter_of_a_layer_restores_the_plain_linear():
    _, model = lora(LoraConfig(r=2, target_modules=["q"]))
    model.add_adapter("mlp", LoraConfig(r=2, target_modules=["fc"]))
    model.delete_adapter("mlp")
    assert all(type(block.mlp.fc) is torch.nn.Linear for block in model.base_model.blocks)


def test_bad_adapter_names_and_duplicates():
    _, model = lora(LoraConfig(r=2))
    with pytest.raises(ValueError, match="exists already"):
        model.add_adapter("default", LoraConfig(r=2))
    with pytest.raises(ValueError, match="nn.Module attribute"):
        model.add_adapter("half", LoraConfig(r=2))
    assert model.adapter_names == ["default"]


def test_switching_while_merged_is_an_error():
    _, model = two_adapters()
    model.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        model.set_adapter("other")


# --------------------------------------------------------------------------------------
# Weighted combination
# --------------------------------------------------------------------------------------
def hand_delta(layer: LoraLayer, name: str, scale: float) -> torch.Tensor:
    return scale * layer.lora_B[name] @ layer.lora_A[name]


def test_cat_combination_is_exactly_the_weighted_sum():
    reference, model = two_adapters()
    weights = [0.7, -1.3]
    model.add_weighted_adapter(["default", "other"], weights, "mix", combination="cat")
    assert model.configs["mix"].r == 4 + 2
    model.set_adapter("mix")
    dense = copy.deepcopy(reference)
    with torch.no_grad():
        for name, layer in model.lora_layers():
            expected = (0.7 * hand_delta(layer, "default", 8 / 4)
                        - 1.3 * hand_delta(layer, "other", 2 / 2))
            torch.testing.assert_close(layer.delta_weight(), expected, rtol=1e-5, atol=1e-6)
            dense.get_submodule(name).weight += expected
    torch.testing.assert_close(model(tokens()).logits, dense(tokens()).logits,
                               rtol=1e-5, atol=1e-5)


def same_rank_adapters():
    """"default" (r = 4, α = 8, s = 2) and "other" (r = 4, α = 2, s = 0.5), both B random."""
    _, model = lora(LoraConfig(r=4, alpha=8, target_modules=["q", "v"]))
    randomize_B(model, seed=3)
    model.add_adapter("other", LoraConfig(r=4, alpha=2, target_modules=["q", "v"]))
    model.set_adapter("other")
    randomize_B(model, seed=4)
    model.set_adapter("default")
    return model


def test_linear_combination_adds_the_factors_and_is_only_approximate():
    model = same_rank_adapters()
    model.add_weighted_adapter(["default", "other"], [0.5, -2.0], "mix", combination="linear")
    assert model.configs["mix"].r == 4
    model.set_adapter("mix")
    for _, layer in model.lora_layers():
        # c = w·s: 0.5·2 = 1 and −2·0.5 = −1, so √|c| = 1 and the sign goes on A
        A = layer.lora_A["default"] - layer.lora_A["other"]
        B = layer.lora_B["default"] + layer.lora_B["other"]
        torch.testing.assert_close(layer.delta_weight(), B @ A, rtol=1e-5, atol=1e-6)
        exact = 0.5 * hand_delta(layer, "default", 2.0) - 2.0 * hand_delta(layer, "other", 0.5)
        cross = (layer.lora_B["other"] @ layer.lora_A["default"]
                 - layer.lora_B["default"] @ layer.lora_A["other"])  # BᵢAⱼ, i ≠ j
        torch.testing.assert_close(layer.delta_weight(), exact + cross, rtol=1e-5, atol=1e-6)
        assert (layer.delta_weight() - exact).abs().max() > 1e-2


def test_linear_combination_of_one_adapter_is_exact():
    model = same_rank_adapters()
    model.add_weighted_adapter(["other"], [-3.0], "scaled", combination="linear")
    model.set_adapter("scaled")
    for _, layer in model.lora_layers():
        torch.testing.assert_close(layer.delta_weight(),
                                   -3.0 * hand_delta(layer, "other", 0.5), rtol=1e-5, atol=1e-6)


def test_svd_combination_at_full_rank_equals_the_weighted_sum():
    _, model = two_adapters()
    model.add_weighted_adapter(["default", "other"], [0.5, 2.0], "svd_full",
                               combination="svd", rank=6)  # rank(ΔW₁ + ΔW₂) ≤ 4 + 2
    model.set_adapter("svd_full")
    for _, layer in model.lora_layers():
        expected = 0.5 * hand_delta(layer, "default", 2.0) + 2.0 * hand_delta(layer, "other", 1.0)
        torch.testing.assert_close(layer.delta_weight(), expected, rtol=1e-4, atol=1e-5)


def test_truncated_svd_combination_is_the_best_rank_k_approximation():
    _, model = two_adapters()
    model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "svd3", rank=3)  # default: svd
    model.set_adapter("svd3")
    for _, layer in model.lora_layers():
        full = hand_delta(layer, "default", 2.0) + hand_delta(layer, "other", 1.0)
        U, S, Vh = torch.linalg.svd(full.detach())
        best = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]  # Eckart–Young
        torch.testing.assert_close(layer.delta_weight(), best, rtol=1e-4, atol=1e-5)
        assert torch.linalg.matrix_rank(layer.delta_weight().detach()) == 3
        # peft's layout: all of σ on B (B = U diag(σ), A = Vᵀ with orthonormal rows)
        A = layer.lora_A["svd3"].detach()
        torch.testing.assert_close(A @ A.T, torch.eye(3), atol=1e-5, rtol=0)


def test_svd_clamp_clips_the_factors_at_the_quantile():
    _, model = two_adapters()
    model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "free", rank=3)
    model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "clipped", rank=3,
                               svd_clamp=0.9)
    for _, layer in model.lora_layers():
        free = torch.cat([layer.lora_B["free"].flatten(), layer.lora_A["free"].flatten()])
        bound = torch.sort(free.detach()).values  # the 0.9-quantile by linear interpolation
        position = 0.9 * (free.numel() - 1)
        low = int(position)
        q = bound[low] + (position - low) * (bound[low + 1] - bound[low])
        torch.testing.assert_close(layer.lora_B["clipped"], layer.lora_B["free"].clamp(-q, q))
        torch.testing.assert_close(layer.lora_A["clipped"], layer.lora_A["free"].clamp(-q, q))
        assert (layer.lora_B["free"].abs() > q).any() or (layer.lora_A["free"].abs() > q).any()


def test_bad_combinations():
    _, model = two_adapters()
    with pytest.raises(ValueError, match="one weight per adapter"):
        model.add_weighted_adapter(["default", "other"], [1.0], "x")
    with pytest.raises(ValueError, match=r"\['cat', 'linear', 'svd'\]"):
        model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "x", combination="ties")
    with pytest.raises(ValueError, match="same r"):  # r = 4 and r = 2
        model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "x", combination="linear")
    with pytest.raises(ValueError, match="rank=3 is for combination='svd'"):
        model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "x", combination="cat",
                                   rank=3)
    with pytest.raises(ValueError, match="svd_clamp"):
        model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "x", svd_clamp=1.5)
    model.add_adapter("mlp", LoraConfig(r=2, target_modules=["fc"]))
    with pytest.raises(ValueError, match="different modules"):
        model.add_weighted_adapter(["default", "mlp"], [1.0, 1.0], "x")
    with pytest.raises(ValueError, match="combination='svd'"):  # Σ r = 24 > d = 16
        for i in range(4):
            model.add_adapter(f"big{i}", LoraConfig(r=6, target_modules=["q", "v"]))
        model.add_weighted_adapter([f"big{i}" for i in range(4)], [1.0] * 4, "x",
                                   combination="cat")
    assert "x" not in model.adapter_names


# --------------------------------------------------------------------------------------
# LoRA+
# --------------------------------------------------------------------------------------
def test_loraplus_gives_B_ratio_times_the_learning_rate_of_A():
    _, model = lora(LoraConfig(r=4, target_modules=["q", "v"]))
    groups = loraplus_param_groups(model, lr=2e-4, ratio=16)
    A_ids = {id(layer.lora_A["default"]) for _, layer in model.lora_layers()}
    B_ids = {id(layer.lora_B["default"]) for _, layer in model.lora_layers()}
    by_kind = {frozenset(id(p) for p in g["params"]): g["lr"] for g in groups}
    assert by_kind[frozenset(A_ids)] == pytest.approx(2e-4)
    assert by_kind[frozenset(B_ids)] == pytest.approx(16 * 2e-4)
    optimizer = make_optimizer(model, lr=2e-4, weight_decay=0.0, param_groups=groups)
    lrs = sorted(g["lr"] for g in optimizer.param_groups)
    assert lrs[1] == pytest.approx(16 * lrs[0])


LORA_FAMILY = ["lora", "rslora", "lora_all", "dora", "qlora", "monteclora", "adalora"]
# The tensors LoRA+ trains at ratio · lr, by their name in the layer: B-like factors and the
# 1-D ones (peft's rule); AdaLoRA's λ is peft's (r, 1) matrix lora_E, so it stays at lr.
FAST = {"lora_B", "lora_magnitude", "lora_log_lambda", "lora_log_alpha", "P"}
SLOW = {"lora_A", "Q", "lambda_"}


def tensor_role(name: str) -> str:
    """'blocks.0.attn.q.lora_B.default' → 'lora_B'; 'blocks.0.attn.q.P' → 'P'."""
    return name.removesuffix(".default").rpartition(".")[2]


@pytest.mark.parametrize("preset", LORA_FAMILY)
def test_loraplus_groups_partition_the_trainable_tensors(preset):
    model = get_peft_model(tiny_gpt(), METHOD_PRESETS[preset]())
    slow, fast = loraplus_param_groups(model, lr=1e-3, ratio=8)
    assert slow["lr"] == pytest.approx(1e-3) and fast["lr"] == pytest.approx(8e-3)
    ids = [id(p) for group in (slow, fast) for p in group["params"]]
    assert len(ids) == len(set(ids))  # no tensor twice
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ids) == set(trainable)  # every trainable tensor, nothing else
    assert {tensor_role(trainable[id(p)]) for p in fast["params"]} <= FAST
    assert {tensor_role(trainable[id(p)]) for p in slow["params"]} <= SLOW


def test_loraplus_refuses_tensors_it_has_no_rate_for():
    model = get_peft_model(tiny_gpt(), METHOD_PRESETS["ia3"]())
    with pytest.raises(ValueError, match="no learning rate for the trainable tensors"):
        loraplus_param_groups(model, lr=1e-3)


def test_presets_build_valid_models():
    for name, make in PRESETS.items():
        model = get_peft_model(tiny_gpt(), make())
        assert model.count_parameters()[0] > 0, name
    assert PRESETS["lora"]() == LoraConfig(r=8, alpha=16, target_modules=["q", "v"])
    assert PRESETS["rslora"]().use_rslora


# --------------------------------------------------------------------------------------
# analysis: rank and spectra
# --------------------------------------------------------------------------------------
def test_delta_weights_are_the_scaled_products():
    _, model = lora(LoraConfig(r=4, alpha=12, target_modules=["q", "fc"]))
    randomize_B(model)
    deltas = delta_weights(model)
    assert set(deltas) == {n for n, _ in model.lora_layers()}
    for name, layer in model.lora_layers():
        torch.testing.assert_close(deltas[name], 3.0 * layer.B @ layer.A)
        assert torch.linalg.matrix_rank(deltas[name]) == 4


def test_singular_values_and_effective_rank():
    g = torch.Generator().manual_seed(0)
    Q1, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    sigma = torch.tensor([5.0, 5.0, 5.0, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.float64)
    W = Q1[:, :12] @ torch.diag(sigma) @ Q2.T  # rank 3, three equal singular values
    torch.testing.assert_close(singular_values(W), sigma, atol=1e-10, rtol=0)
    assert effective_rank(W) == pytest.approx(3.0, abs=1e-6)
    s = torch.tensor([3.0, 1.0])  # exp(−Σ p log p) with p = (3/4, 1/4)
    assert effective_rank(s) == pytest.approx(math.exp(-(0.75 * math.log(0.75)
                                                         + 0.25 * math.log(0.25))))


def test_subspace_similarity_closed_forms():
    k, theta = 10, 0.4
    e = torch.eye(k, dtype=torch.float64)
    # A1 spans e₀, e₁ (σ = 2, 1); A2's top direction is cos θ e₀ + sin θ e₅, then e₁.
    A1 = torch.stack([2 * e[0], e[1]])
    A2 = torch.stack([3 * (math.cos(theta) * e[0] + math.sin(theta) * e[5]), e[1]])
    assert subspace_similarity(A1, A2, 1, 1) == pytest.approx(math.cos(theta) ** 2)
    assert subspace_similarity(A1, A2, 2, 1) == pytest.approx(math.cos(theta) ** 2)
    assert subspace_similarity(A1, A2, 1, 2) == pytest.approx(math.cos(theta) ** 2)
    assert subspace_similarity(A1, A2, 2, 2) == pytest.approx((math.cos(theta) ** 2 + 1) / 2)
    assert subspace_similarity(A1, A1, 2, 2) == pytest.approx(1.0)
    assert subspace_similarity(A1, torch.stack([e[7], e[8]]), 2, 2) == pytest.approx(0.0)
    assert subspace_similarity_grid(A1, A2).shape == (2, 2)
    with pytest.raises(ValueError):
        subspace_similarity(A1, A2, 3, 1)


# --------------------------------------------------------------------------------------
# Fine-tuning the pretrained `small` model (skipped until the checkpoint exists)
# --------------------------------------------------------------------------------------
SMALL = CHECKPOINT_DIR / "small.safetensors"


@pytest.fixture(scope="module")
def sentiment_runs():
    """(accuracy, answer loss) after 40 steps for LoRA, rsLoRA, LoRA+; and the base's loss."""
    if not SMALL.is_file():
        pytest.skip("data/checkpoints/small.safetensors is not built yet")
    from minipeft.pretrained import load_pretrained
    from minipeft.train import train

    runs = {"base": (None, sentiment_answer_loss(load_pretrained("small")))}
    for name, config, ratio in [("lora", LoraConfig(r=8, alpha=16), None),
                                ("rslora", LoraConfig(r=8, alpha=16, use_rslora=True), None),
                                ("lora+", LoraConfig(r=8, alpha=16), 16)]:
        torch.manual_seed(0)
        model = get_peft_model(load_pretrained("small"), config)
        groups = loraplus_param_groups(model, lr=3e-3, ratio=ratio) if ratio else None
        result = train(model, "sentiment", steps=80, lr=3e-3, eval_limit=100,
                       param_groups=groups, progress=False)
        runs[name] = (result.final_metric, sentiment_answer_loss(model))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "rslora", "lora+"])
def test_small_learns_sentiment(sentiment_runs, method):
    """Above chance (the base is at chance: its corpus never names the task's labels), and
    at most half the base's answer loss (label + end marker)."""
    from minipeft.tasks import chance_baseline
    accuracy, loss = sentiment_runs[method]
    assert accuracy > chance_baseline("sentiment") + 0.1
    assert loss < 0.5 * sentiment_runs["base"][1]
