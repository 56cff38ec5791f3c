"""MonteCLoRA: Bayesian re-parameterisation of LoRA (Sengupta et al., TMLR 2025).

LoRA is sensitive to learning rate and batch size. MonteCLoRA makes the LoRA matrix A
stochastic during training (Sengupta et al., 2025, whose notation we follow, as does
T. Chakraborty's lecture "Parameter-Efficient Fine-Tuning (PEFT)"):

* each column of A is a mixture of Gaussians with a learnable mean μ and covariance Σ;
* Σ is sampled from a Wishart distribution with a learnable prior Λ;
* the mixture weights π are sampled from a Dirichlet distribution with prior Π (a
  hyper-parameter);
* the mixture has zero-mean noise around μ, so the output is an unbiased estimator of the
  LoRA output with A = μ ("no additional expected loss"), and the update is equivalent to
  Gaussian noise on each LoRA parameter, which smooths the loss landscape.

One training forward of a target layer (r = rank, k = d_in, N = n_samples, df = r):

    Σ  ~ Wishart(df, Λ/df)            Σ ∈ ℝ^{r×r}, E[Σ] = Λ = diag(exp(log_lambda))
    π  ~ Dirichlet(α)                 π ∈ Δ^{N−1}; α = exp(log_alpha) learnable, prior Dir(Π)
    Z_n = chol(Σ) E_n,  E_n ~ N(0, I)  Z_n ∈ ℝ^{r×k}: every column of Z_n is N(0, Σ)
    Ã  = μ + ε Σ_n π_n Z_n            the sampled A (ε = sample_scale)
    h  = W₀x + b + (α_lora/r) · B Ã x     computed as (x Ãᵀ) Bᵀ

At evaluation Ã = μ: exactly LoRA with A = μ, deterministic (and mergeable).
The regulariser (through `regularization_loss()`), all closed-form and ≥ 0:

    KL = KL(Dir(α) ‖ Dir(Π))  +  KL(W(df, Λ/df) ‖ W(df, I/df))  +  N · E_Σ KL(N(0, Σ) ‖ N(0, I))
    loss = C + kl_weight · Σ_layers KL

Simplifications, stated so that they can be compared with the paper:
1. One covariance Σ (r×r) per layer shared by all columns of A, with a *diagonal* learnable
   scale Λ (r numbers), giving the paper's O(r) extra parameters; Wishart df fixed at r.
2. Σ is drawn with the Bartlett decomposition (chol(Σ) = diag(√Λ) T / √df, T lower
   triangular with χ² diagonal and N(0, 1) below), so no Cholesky factorisation is needed
   and gradients reach Λ by re-parameterisation.
3. π is drawn with torch's re-parameterised Dirichlet sampler (implicit gradients to α)
   rather than an approximation of the Dirichlet.
4. One Monte-Carlo draw (Σ, π, Z_1..Z_N) per layer per forward, shared by the batch.
5. The Gaussian KL is averaged over Σ analytically instead of using the sampled Σ; no
   extra entropy term.

Trainable parameters per target matrix: r (d_in + d_out) + r + N
(μ and B as in LoRA, log Λ: r, log α: N).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Chi2, Dirichlet

from minipeft.checks import check_non_negative, check_positive, check_positive_int
from minipeft.methods.base import register_method
from minipeft.methods.lora import LoraConfig, LoraLayer, LoraModel


@dataclass
class MonteCLoraConfig(LoraConfig):
    """LoRA's fields plus the Monte-Carlo ones.

    n_samples: N Gaussian samples mixed per forward.  sample_scale: ε, size of the noise.
    dirichlet_prior: Π, concentration of the Dirichlet prior (and the initial α).
    kl_weight: weight of the KL regulariser in the loss.
    """

    peft_type: ClassVar[str] = "MONTECLORA"
    n_samples: int = 4
    sample_scale: float = 0.01
    dirichlet_prior: float = 1.0
    kl_weight: float = 1e-4

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.n_samples, "n_samples")
        check_non_negative(self.sample_scale, "sample_scale (ε)")
        check_positive(self.dirichlet_prior, "dirichlet_prior (Π)")
        check_non_negative(self.kl_weight, "kl_weight")


PRESETS = {
    "monteclora": lambda: MonteCLoraConfig(r=8, alpha=16, target_modules=["q", "v"]),
}
LEARNING_RATES = {"monteclora": 3e-3}  # AdamW rate of each preset: LoRA's


# --------------------------------------------------------------------------------------
# Sampling and the three KL terms (small functions, one equation each)
# --------------------------------------------------------------------------------------
def bartlett_factor(p: int, df: int, device=None) -> torch.Tensor:
    """T with T Tᵀ ~ Wishart(df, I_p): T_ii = √χ²(df − i), T_ij ~ N(0, 1) for i > j."""
    degrees = torch.arange(df, df - p, -1, dtype=torch.float32, device=device)
    diagonal = Chi2(degrees).sample().sqrt()
    below = torch.randn(p, p, device=device).tril(-1)
    return below + torch.diag(diagonal)  # (p, p), lower triangular


def dirichlet_kl(alpha: torch.Tensor, prior: float) -> torch.Tensor:
    """KL(Dir(α) ‖ Dir(Π·1)), closed form."""
    beta = torch.full_like(alpha, prior)
    a0 = alpha.sum()
    return (torch.lgamma(a0) - torch.lgamma(alpha).sum() - torch.lgamma(beta.sum())
            + torch.lgamma(beta).sum()
            + ((alpha - beta) * (torch.digamma(alpha) - torch.digamma(a0))).sum())


def wishart_kl(lam: torch.Tensor, df: int) -> torch.Tensor:
    """KL(W(df, Λ/df) ‖ W(df, I/df)) for diagonal Λ = diag(lam): (df/2) Σ (λ − log λ − 1)."""
    return df / 2 * (lam - lam.log() - 1).sum()


def expected_gaussian_kl(lam: torch.Tensor, df: int) -> torch.Tensor:
    """E_Σ KL(N(0, Σ) ‖ N(0, I)) for Σ ~ W(df, Λ/df): ½ (E tr Σ − p − E log det Σ).

    E tr Σ = Σ λ;  E log det Σ = Σ log λ − p log(df/2) + Σ_{i<p} ψ((df − i)/2).
    """
    p = lam.numel()
    digammas = torch.digamma((df - torch.arange(p, dtype=lam.dtype, device=lam.device)) / 2).sum()
    expected_log_det = lam.log().sum() - p * math.log(df / 2) + digammas
    return 0.5 * (lam.sum() - p - expected_log_det)


# --------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------
class MonteCLoraLayer(LoraLayer):
    """LoraLayer whose A is the mean μ of a Monte-Carlo mixture while training.

    Per adapter, besides lora_A (= μ, (r, d_in)) and lora_B ((d_out, r)):
    lora_log_lambda (r,) = log Λ and lora_log_alpha (N,) = log α.
    """

    def __init__(self, base_layer: nn.Linear):
        super().__init__(base_layer)
        self.lora_log_lambda = nn.ParameterDict()
        self.lora_log_alpha = nn.ParameterDict()
        self.monte_config: dict[str, MonteCLoraConfig] = {}

    def add_adapter(self, name: str, config: MonteCLoraConfig) -> None:
        super().add_adapter(name, config)
        # Λ = I and α = Π at the start: the two prior KL terms begin at exactly zero.
        self.lora_log_lambda[name] = nn.Parameter(torch.zeros(config.r), requires_grad=False)
        self.lora_log_alpha[name] = nn.Parameter(
            torch.full((config.n_samples,), math.log(config.dirichlet_prior)), requires_grad=False)
        self.monte_config[name] = config

    def adapter_tensors(self, name: str) -> dict[str, nn.Parameter]:
        return {**super().adapter_tensors(name), "lora_log_lambda": self.lora_log_lambda[name],
                "lora_log_alpha": self.lora_log_alpha[name]}

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        del self.lora_log_lambda[name]
        del self.lora_log_alpha[name]
        del self.monte_config[name]

    # --- computing ------------------------------------------------------------------
    def sampled_A(self) -> torch.Tensor:
        """Ã = μ + ε Σ_n π_n chol(Σ) E_n: one Monte-Carlo draw, (r, d_in)."""
        name = self.active_adapter
        config, mu = self.monte_config[name], self.lora_A[name]
        r, k = mu.shape
        df = r  # Wishart degrees of freedom (simplification 1)
        lam = self.lora_log_lambda[name].exp()  # Λ diagonal: (r,)
        # chol(Σ) = diag(√Λ) T / √df, so Σ = Λ^½ T Tᵀ Λ^½ / df ~ W(df, Λ/df): (r, r)
        chol_sigma = lam.sqrt()[:, None] * bartlett_factor(r, df, mu.device) / math.sqrt(df)
        pi = Dirichlet(self.lora_log_alpha[name].exp()).rsample()  # mixture weights: (N,)
        noise = torch.randn(config.n_samples, r, k, device=mu.device)  # E_n: (N, r, k)
        samples = chol_sigma @ noise  # Z_n = chol(Σ) E_n, columns ~ N(0, Σ): (N, r, k)
        mixture = (pi[:, None, None] * samples).sum(dim=0)  # Σ_n π_n Z_n: (r, k)
        return mu + config.sample_scale * mixture

    def lora_down(self, x: torch.Tensor) -> torch.Tensor:
        """Training: (α/r) x Ãᵀ with a fresh Ã; eval: LoRA's (α/r) x μᵀ. (…, d_in) → (…, r)."""
        if not self.training:
            return super().lora_down(x)  # the deterministic mean path
        name = self.active_adapter
        x = self.lora_dropout[name](x)
        return self.scaling[name] * F.linear(x, self.sampled_A())  # s · x Ãᵀ: (…, r)

    def kl_divergence(self) -> torch.Tensor:
        """KL_Dir + KL_Wishart + N · E KL_Gauss of the active adapter (≥ 0)."""
        name = self.active_adapter
        config = self.monte_config[name]
        lam, alpha = self.lora_log_lambda[name].exp(), self.lora_log_alpha[name].exp()
        df = lam.numel()
        return (dirichlet_kl(alpha, config.dirichlet_prior) + wishart_kl(lam, df)
                + config.n_samples * expected_gaussian_kl(lam, df))


@register_method(MonteCLoraConfig)
class MonteCLoraModel(LoraModel):
    """A frozen GPT whose target Linear layers are MonteCLoraLayers."""

    layer_class: ClassVar[type[LoraLayer]] = MonteCLoraLayer

    def regularization_loss(self) -> torch.Tensor:
        """kl_weight · Σ_layers KL: added to the task loss by minipeft.train."""
        layers = [layer for _, layer in self.lora_layers() if layer.active_adapter is not None]
        return self.config.kl_weight * sum(layer.kl_divergence() for layer in layers)

    def add_weighted_adapter(self, *args, **kwargs) -> None:
        raise NotImplementedError("weighted combination of MonteCLoRA adapters is not defined "
                                  "(each carries its own noise model); combine LoRA adapters")


__all__ = ["MonteCLoraConfig", "MonteCLoraLayer", "MonteCLoraModel", "dirichlet_kl",
           "wishart_kl", "expected_gaussian_kl", "bartlett_factor", "PRESETS"]
