"""Tests for AdaLoRA (minipeft.methods.adalora).

Independent references: the cubic budget re-derived here from the paper's formula, a dense
W₀ + (α/r) P diag(λ) Q, the orthogonality penalty and the importance EMAs written out by hand.
"""
import copy
import math

import pytest
import torch

from minipeft.methods.adalora import (PRESETS, AdaLoraConfig, AdaLoraLayer, AdaLoraModel,
                                      rank_budget)
from minipeft.methods.base import get_peft_model
from minipeft.train import lm_windows, train_loop
from helpers import D, assert_preset_learns_sentiment, tiny_gpt, tokens

torch.set_num_threads(1)


def batches():
    stream = torch.arange(4000) % 17  # a learnable stream: next = previous + 1 (mod 17)
    return lm_windows(stream, 16, batch_size=4)


def adalora(config: AdaLoraConfig, seed: int = 0):
    base = tiny_gpt(seed)
    return copy.deepcopy(base), get_peft_model(base, config)


def randomize(model: AdaLoraModel, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.adalora_layers():
            layer.lambda_.copy_(torch.randn(layer.lambda_.shape, generator=g))


def expected_budget(t, T, b0, bT, ti, tf):
    """Zhang et al. (2023), Eq. 12, written independently of the library."""
    if t < ti:
        return b0
    if t >= T - tf:
        return bT
    return bT + int((b0 - bT) * (1 - (t - ti) / (T - ti - tf)) ** 3)


class Recorder:
    """Wraps after_optimizer_step to record the total rank and the penalty after each step."""

    def __init__(self, model: AdaLoraModel):
        self.model, self.inner = model, model.after_optimizer_step
        self.ranks, self.penalties = [], []
        model.after_optimizer_step = self

    def __call__(self, step, total_steps):
        self.inner(step, total_steps)
        self.ranks.append(self.model.total_rank())
        with torch.no_grad():
            self.penalties.append(sum(layer.orthogonality_penalty().item()
                                      for _, layer in self.model.adalora_layers()))


# --------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------


def test_forward_equals_dense_P_diag_lambda_Q():
    reference, model = adalora(AdaLoraConfig(init_r=6, target_r=2, alpha=3,
                                             target_modules=["q", "fc"]))
    randomize(model)
    layer = model.base_model.blocks[0].mlp.fc
    base = reference.blocks[0].mlp.fc
    w = base.weight + (3 / 6) * layer.P @ torch.diag(layer.lambda_) @ layer.Q
    x = torch.randn(4, D)
    assert torch.allclose(layer(x), x @ w.T + base.bias, atol=1e-5)


def test_pruned_triplets_contribute_nothing():
    reference, model = adalora(AdaLoraConfig(init_r=6, target_r=2, alpha=6, target_modules=["v"]))
    randomize(model)
    layer = model.base_model.blocks[1].attn.v
    layer.rank_mask[[1, 4]] = False
    x = torch.randn(4, D)
    before = layer(x)
    with torch.no_grad():  # whatever the pruned triplets hold, the output must not change
        layer.P[:, [1, 4]] += 5.0
        layer.Q[[1, 4], :] -= 3.0
        layer.lambda_[[1, 4]] = 7.0
    assert torch.equal(layer(x), before)
    kept = [0, 2, 3, 5]
    w = reference.blocks[1].attn.v.weight + (layer.P[:, kept] * layer.lambda_[kept]) @ layer.Q[kept]
    assert torch.allclose(before, x @ w.T + reference.blocks[1].attn.v.bias, atol=1e-5)
    assert torch.allclose(layer.delta_weight(), w - reference.blocks[1].attn.v.weight, atol=1e-6)


def test_orthogonality_penalty_by_hand():
    layer = AdaLoraLayer(torch.nn.Linear(4, 5), AdaLoraConfig(init_r=3, target_r=1))
    with torch.no_grad():
        layer.P.copy_(torch.eye(5)[:, :3])  # orthonormal columns: PᵀP = I
        layer.Q.copy_(2 * torch.eye(4)[:3])  # QQᵀ = 4 I → each diagonal entry is off by 3
    assert layer.orthogonality_penalty().item() == pytest.approx(3 * 3 ** 2)


def test_both_forms_of_the_orthogonality_loss_by_hand():
    """Two matrices; in each P is orthonormal and QQᵀ = c² I, so ‖PᵀP − I‖_F = 0 and
    ‖QQᵀ − I‖_F = |c² − 1| √r, r = 3."""
    losses = {}
    for form in ("squared_sum", "mean_norm"):
        _, model = adalora(AdaLoraConfig(init_r=3, target_r=1, target_modules=["q"],
                                         orth_reg_weight=0.5, orth_reg_form=form))
        with torch.no_grad():
            for (_, layer), c in zip(model.adalora_layers(), (2.0, 3.0)):
                layer.P.copy_(torch.eye(D)[:, :3])
                layer.Q.copy_(c * torch.eye(D)[:3])
        losses[form] = model.regularization_loss().item()
    assert losses["squared_sum"] == pytest.approx(0.5 * (3 * 3 ** 2 + 3 * 8 ** 2))
    assert losses["mean_norm"] == pytest.approx(0.5 * (0 + 3 * 3 ** 0.5 + 0 + 8 * 3 ** 0.5) / 4)


def test_importance_is_the_smoothed_sensitivity_times_uncertainty():
    config = AdaLoraConfig(init_r=4, target_r=2, beta1=0.8, beta2=0.7, target_modules=["q"])
    _, model = adalora(config)
    randomize(model)
    layer = model.base_model.blocks[0].attn.q
    x = tokens()
    sensitivities = []
    for _ in range(2):  # two steps, no update in between: the EMA arithmetic only
        model.zero_grad()
        model(x, x).loss.backward()
        sensitivities.append({n: (p * p.grad).abs() for n, p in layer.svd_parameters().items()})
        layer.update_importance()
    expected = torch.zeros(4)
    for name, reduce in [("lambda_", lambda t: t), ("P", lambda t: t.mean(dim=0)),
                         ("Q", lambda t: t.mean(dim=1))]:
        i1, i2 = sensitivities[0][name], sensitivities[1][name]
        avg1 = 0.2 * i1
        unc1 = 0.3 * (i1 - avg1).abs()
        avg2 = 0.8 * avg1 + 0.2 * i2
        unc2 = 0.7 * unc1 + 0.3 * (i2 - avg2).abs()
        expected += reduce(avg2 * unc2)
    assert torch.allclose(layer.triplet_scores(), expected, rtol=1e-5, atol=1e-12)


# --------------------------------------------------------------------------------------
# Training: schedule, orthogonality, pruning
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    config = AdaLoraConfig(init_r=6, target_r=2, t_init=0.1, t_final=0.2, orth_reg_weight=0.5)
    _, model = adalora(config)
    recorder = Recorder(model)
    train_loop(model, batches(), 40, lr=1e-2, progress=False)
    return model, recorder


def test_total_rank_follows_the_cubic_schedule(trained):
    model, recorder = trained
    n = len(model.adalora_layers())
    assert n == 2 * 6
    T, ti, tf = 40, round(0.1 * 40), round(0.2 * 40)
    expected = [expected_budget(t, T, 6 * n, 2 * n, ti, tf) for t in range(T)]
    assert recorder.ranks == expected
    assert expected[0] == 72 and expected[-1] == 24 and len(set(expected)) > 5
    assert [model.budget(t, T) for t in range(T)] == expected
    assert rank_budget(20, 40, 72, 24, 4, 8) == 24 + math.floor(48 * (1 - 16 / 28) ** 3)


def test_orthogonality_penalty_decreases_during_training(trained):
    _, recorder = trained
    assert recorder.penalties[-1] < 0.5 * recorder.penalties[0]


def test_rank_pattern_and_masked_lambdas_after_training(trained):
    model, _ = trained
    pattern = model.rank_pattern()
    assert sum(pattern.values()) == 24 and len(pattern) == 12
    for name, layer in model.adalora_layers():
        assert pattern[name] == int(layer.rank_mask.sum())
        assert torch.all(layer.lambda_[~layer.rank_mask] == 0)  # the pruning operator T


def test_save_and_load_keeps_the_pruned_ranks(tmp_path, trained):
    model, _ = trained
    x = tokens()
    model.save_pretrained(tmp_path)
    loaded = AdaLoraModel.from_pretrained(tiny_gpt(), tmp_path)
    assert loaded.rank_pattern() == model.rank_pattern()
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_orth_reg_form_is_saved_and_read_back(tmp_path):
    _, model = adalora(AdaLoraConfig(init_r=4, target_r=2, orth_reg_form="mean_norm"))
    randomize(model)
    model.save_pretrained(tmp_path)
    loaded = AdaLoraModel.from_pretrained(tiny_gpt(), tmp_path)
    assert loaded.config.orth_reg_form == "mean_norm"
    assert torch.equal(loaded.regularization_loss(), model.regularization_loss())


def test_trainable_count_is_r_times_din_plus_dout_plus_one():
    _, model = adalora(AdaLoraConfig(init_r=5, target_r=2, target_modules=["q", "fc"]))
    trainable, _ = model.count_parameters()
    assert trainable == 2 * (5 * (D + D + 1) + 5 * (D + 4 * D + 1))


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    (dict(init_r=4, target_r=6), "target_r=6 > init_r=4"),
    (dict(init_r=0), "positive integer"),
    (dict(t_init=0.6, t_final=0.5), "no steps for pruning"),
    (dict(beta1=1.0), "beta1"),
    (dict(orth_reg_weight=-1), "orth_reg_weight"),
    (dict(orth_reg_form="peft"), "unknown orth_reg_form 'peft'; choose one of"),
])
def test_bad_configs(bad, message):
    with pytest.raises(ValueError, match=message):
        AdaLoraConfig(**bad)


def test_bad_models_and_calls():
    with pytest.raises(ValueError, match=r"init_r=20 is larger than min\(d_out, d_in\)"):
        get_peft_model(tiny_gpt(), AdaLoraConfig(init_r=20, target_r=4))
    with pytest.raises(ValueError, match="tied"):
        get_peft_model(tiny_gpt(), AdaLoraConfig(init_r=4, target_r=2, target_modules=["head"]))
    _, model = adalora(AdaLoraConfig(init_r=4, target_r=2))
    with pytest.raises(RuntimeError, match="needs gradients"):
        model.after_optimizer_step(0, 100)
    _, model = adalora(AdaLoraConfig(init_r=4, target_r=2, t_init=0.4, t_final=0.4))
    with pytest.raises(ValueError, match="no pruning phase"):
        model.after_optimizer_step(0, 2)  # 1 warm-up + 1 final step fill the whole run


def test_preset_builds():
    model = get_peft_model(tiny_gpt(), PRESETS["adalora"]())
    assert sum(model.rank_pattern().values()) == 12 * 12


@pytest.mark.slow
def test_small_learns_sentiment_above_chance():
    assert_preset_learns_sentiment("adalora")
