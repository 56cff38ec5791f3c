"""Tests for MonteCLoRA (minipeft.methods.monteclora).

Independent references: the dense mean path W₀ + (α/r) B μ written here, torch's own
Dirichlet and Gamma KL divergences, Monte-Carlo averages of torch's Wishart sampler, and
sample means that must vanish for an unbiased estimator.
"""
import copy

import pytest
import torch
from torch.distributions import Dirichlet, Gamma, kl_divergence

from minipeft.methods.base import get_peft_model
from minipeft.methods.monteclora import (PRESETS, MonteCLoraConfig, MonteCLoraModel,
                                         bartlett_factor, dirichlet_kl, expected_gaussian_kl,
                                         wishart_kl)
from helpers import D, assert_preset_learns_sentiment, tiny_gpt, tokens

torch.set_num_threads(1)


def monteclora(config: MonteCLoraConfig, seed: int = 0):
    base = tiny_gpt(seed)
    model = get_peft_model(base, config)
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():  # a non-zero B, and priors moved away from their initial values
        for _, layer in model.lora_layers():
            layer.B.copy_(torch.randn(layer.B.shape, generator=g) * 0.3)
            layer.lora_log_lambda["default"].copy_(torch.randn(config.r, generator=g) * 0.3)
            layer.lora_log_alpha["default"].add_(torch.rand(config.n_samples, generator=g))
    return model


def test_eval_is_deterministic_and_equals_the_mean_path_lora():
    reference = tiny_gpt()
    model = monteclora(MonteCLoraConfig(r=4, alpha=8, target_modules=["q", "v", "fc"]))
    dense = copy.deepcopy(reference)
    with torch.no_grad():
        for name, layer in model.lora_layers():
            dense.get_submodule(name).weight += 2.0 * layer.B @ layer.lora_A["default"]  # μ
    model.eval()
    x = tokens()
    first = model(x).logits
    assert torch.equal(first, model(x).logits)
    assert torch.allclose(first, dense(x).logits, atol=1e-5)


def test_training_forward_is_stochastic_but_seeded_reproducible():
    model = monteclora(MonteCLoraConfig(r=4, alpha=8, sample_scale=0.1))
    model.train()
    x = tokens()
    torch.manual_seed(5)
    a = model(x).logits
    b = model(x).logits
    torch.manual_seed(5)
    again = model(x).logits
    assert not torch.allclose(a, b)
    assert torch.equal(a, again)


def test_sampled_A_is_unbiased_around_the_mean():
    model = monteclora(MonteCLoraConfig(r=3, alpha=6, sample_scale=1.0, n_samples=3))
    layer = model.base_model.blocks[0].attn.q
    torch.manual_seed(0)
    with torch.no_grad():
        noise = torch.stack([layer.sampled_A() - layer.A for _ in range(1000)])
    assert noise.std() > 0.1  # really random ...
    assert noise.mean(dim=0).abs().max() < 5 * noise.std() / 1000 ** 0.5  # ... with mean zero


def test_sampled_A_has_the_closed_form_second_moment():
    """Ã − μ = ε Σₙ πₙ chol(Σ) Eₙ with Eₙ ~ N(0, I), Σ ~ W(df, Λ/df), π ~ Dir(α), independent.
    Given π and Σ, each entry (i, j) is N(0, ε² Σₙ πₙ² Σ_ii); averaging over Σ (E Σ = Λ)
    and over π (E πₙ² = αₙ(αₙ + 1) / (α₀(α₀ + 1)), α₀ = Σ αₙ):

        E[(Ã − μ)²_ij] = ε² · Σₙ E[πₙ²] · λ_i,      E[(Ã − μ)_ij (Ã − μ)_i'j] = 0  (i ≠ i').
    """
    eps, lam, alpha = 0.5, torch.tensor([0.25, 1.0, 4.0]), torch.tensor([0.5, 1.0, 3.0])
    model = get_peft_model(tiny_gpt(), MonteCLoraConfig(r=3, alpha=6, sample_scale=eps,
                                                        n_samples=3, target_modules=["q"]))
    layer = model.base_model.blocks[0].attn.q
    with torch.no_grad():  # a non-identity Λ and a non-uniform α
        layer.lora_log_lambda["default"].copy_(lam.log())
        layer.lora_log_alpha["default"].copy_(alpha.log())
    torch.manual_seed(0)
    with torch.no_grad():
        noise = torch.stack([layer.sampled_A() - layer.A for _ in range(4000)])  # (S, r, k)
    a0 = alpha.sum()
    expected_pi_squared = (alpha * (alpha + 1)).sum() / (a0 * (a0 + 1))
    expected = eps ** 2 * expected_pi_squared * lam  # (r,)
    second_moment = (noise ** 2).mean(dim=(0, 2))  # per row i, over samples and columns
    torch.testing.assert_close(second_moment, expected, rtol=0.1, atol=0)
    cross = (noise[:, :, None, :] * noise[:, None, :, :]).mean(dim=(0, 3))  # (r, r)
    off_diagonal = cross - torch.diag(cross.diagonal())
    assert (off_diagonal.abs() < 0.1 * torch.outer(expected, expected).sqrt()).all()


def test_bartlett_factor_gives_wishart_moments():
    # S ~ W(n, I): E S = n I, Var S_ii = 2n, Var S_ij = n (i ≠ j)
    torch.manual_seed(0)
    factors = [bartlett_factor(3, 5) for _ in range(3000)]
    assert all(torch.equal(t, t.tril()) and (t.diagonal() > 0).all() for t in factors)
    samples = torch.stack([t @ t.T for t in factors])
    assert torch.allclose(samples.mean(dim=0), 5 * torch.eye(3), atol=0.3)
    expected_var = torch.full((3, 3), 5.0) + 5.0 * torch.eye(3)
    assert torch.allclose(samples.var(dim=0), expected_var, rtol=0.15)


def test_dirichlet_kl_matches_torch():
    alpha = torch.tensor([0.5, 2.0, 1.3, 4.0])
    expected = kl_divergence(Dirichlet(alpha), Dirichlet(torch.full((4,), 1.5)))
    assert dirichlet_kl(alpha, 1.5).item() == pytest.approx(expected.item(), rel=1e-5)


def test_wishart_kl_in_one_dimension_is_a_gamma_kl():
    # For p = 1, W(df, v/df) is Gamma(shape df/2, rate df/(2v)).
    df, v = 3, 1.7
    expected = kl_divergence(Gamma(df / 2, df / (2 * v)), Gamma(df / 2, df / 2))
    assert wishart_kl(torch.tensor([v]), df).item() == pytest.approx(expected.item(), rel=1e-5)


def test_expected_gaussian_kl_matches_monte_carlo():
    # By definition Σ = (1/df) Σ_j g_j g_jᵀ with g_j ~ N(0, Λ) is W(df, Λ/df).
    lam = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    torch.manual_seed(0)
    g = torch.randn(20000, 6, 3, dtype=torch.float64) * lam.sqrt()  # (samples, df, p)
    sigma = g.transpose(1, 2) @ g / 6
    kl = 0.5 * (sigma.diagonal(dim1=1, dim2=2).sum(1) - 3 - torch.logdet(sigma))
    assert expected_gaussian_kl(lam, 6).item() == pytest.approx(kl.mean().item(), rel=0.02)


def test_kl_is_nonnegative_and_zero_prior_terms_at_init():
    model = get_peft_model(tiny_gpt(), MonteCLoraConfig(r=4, alpha=8))
    layer = model.base_model.blocks[0].attn.v
    lam, alpha = layer.lora_log_lambda["default"].exp(), layer.lora_log_alpha["default"].exp()
    assert dirichlet_kl(alpha, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert wishart_kl(lam, 4).item() == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    for _ in range(20):
        with torch.no_grad():
            layer.lora_log_lambda["default"].normal_(std=2.0)
            layer.lora_log_alpha["default"].normal_(std=2.0)
        assert layer.kl_divergence().item() >= 0
    assert model.regularization_loss().item() >= 0


def test_gradients_reach_mean_B_and_both_priors():
    model = monteclora(MonteCLoraConfig(r=4, alpha=8, target_modules=["q"]))
    model.train()
    x = tokens()
    (model(x, x).loss + model.regularization_loss()).backward()
    layer = model.base_model.blocks[1].attn.q
    for name, p in layer.adapter_tensors("default").items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_trainable_count_and_merge_of_the_mean():
    model = monteclora(MonteCLoraConfig(r=4, alpha=8, n_samples=3, target_modules=["q", "fc"]))
    trainable, _ = model.count_parameters()
    assert trainable == 2 * (4 * (D + D) + 4 + 3 + 4 * (D + 4 * D) + 4 + 3)
    model.eval()
    x = tokens()
    expected = model(x).logits
    assert torch.allclose(model.merge_and_unload()(x).logits, expected, atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (dict(n_samples=0), "n_samples"),
    (dict(sample_scale=-0.1), "sample_scale"),
    (dict(dirichlet_prior=0.0), "dirichlet_prior"),
    (dict(kl_weight=-1.0), "kl_weight"),
    (dict(r=0), "positive integer"),
])
def test_bad_configs(bad, message):
    with pytest.raises(ValueError, match=message):
        MonteCLoraConfig(**bad)


def test_preset_builds():
    model = get_peft_model(tiny_gpt(), PRESETS["monteclora"]())
    assert isinstance(model, MonteCLoraModel)


@pytest.mark.slow
def test_small_learns_sentiment_above_chance():
    assert_preset_learns_sentiment("monteclora")
