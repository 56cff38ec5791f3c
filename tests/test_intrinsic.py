"""Intrinsic dimension: θ = θ₀ + P φ with a random P regenerated from its seed.

Independent references: an explicit Sylvester Hadamard matrix, the Fastfood product built
as dense matrices, the chain rule ∂L/∂φ = Pᵀ ∂L/∂θ from a plain GPT's own gradients.
"""
import pytest
import torch
from safetensors.torch import load_file

from minipeft.methods import learning_rate
from minipeft.methods.base import PeftModel, get_peft_model
from minipeft.methods.intrinsic import (
    PRESETS, FastfoodProjection, IntrinsicConfig, d90, fwht,
)
from minipeft.model import GPT, GPTConfig
from minipeft.train import answer_loss

torch.set_num_threads(1)
TINY = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, d_model=16)


def tiny_gpt(seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**TINY)).eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 64, (3, 10), generator=g), torch.randint(0, 64, (3, 10), generator=g)


def sylvester_hadamard(n: int) -> torch.Tensor:
    H = torch.ones(1, 1)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def test_fwht_is_the_hadamard_matrix():
    x = torch.randn(3, 32)
    assert torch.allclose(fwht(x), x @ sylvester_hadamard(32), atol=1e-5)
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.randn(12))


def test_fastfood_equals_its_dense_definition():
    D, d = 70, 12  # n = 16 rows per block, m = 5 blocks, the last one cut
    proj = FastfoodProjection(D, d, torch.Generator().manual_seed(0))
    n = proj.n
    H = sylvester_hadamard(n)
    blocks = []
    for b in range(proj.B.shape[0]):
        Pi = torch.eye(n)[proj.Pi[b]]  # (Π x)_i = x_{π(i)}
        V = H @ torch.diag(proj.G[b]) @ Pi @ H @ torch.diag(proj.B[b])  # (n, n)
        blocks.append(V[:, :d])  # φ is zero-padded from d to n
    P = torch.cat(blocks)[:D]
    phi = torch.randn(d)
    assert torch.allclose(proj(phi), P @ phi, atol=1e-5)
    assert torch.allclose(proj.matrix(), P, atol=1e-5)


@pytest.mark.parametrize("projection", ["dense", "fastfood"])
def test_phi_zero_is_the_base_and_columns_are_unit_length(projection):
    x, _ = batch()
    peft = get_peft_model(tiny_gpt(), IntrinsicConfig(d=20, projection=projection))
    assert torch.equal(peft(x).logits, tiny_gpt()(x).logits)
    assert peft.count_parameters() == (20, tiny_gpt().num_parameters())
    P = peft.projection.matrix()
    assert P.shape == (peft.D, 20) and peft.D == tiny_gpt().num_parameters()
    # fastfood columns are unit length before the last block is cut to D rows
    assert torch.allclose(P.norm(dim=0), torch.ones(20), atol=0.1 if projection == "fastfood"
                          else 1e-5)


@pytest.mark.parametrize("projection", ["dense", "fastfood"])
def test_gradient_of_phi_is_P_transposed_times_the_weight_gradient(projection):
    x, y = batch()
    peft = get_peft_model(tiny_gpt(), IntrinsicConfig(d=7, projection=projection, seed=3))
    with torch.no_grad():
        peft.phi.normal_()
    peft(x, y).loss.backward()
    # the same θ = θ₀ + P φ written into a plain GPT, differentiated by plain autograd
    plain = tiny_gpt()
    P = peft.projection.matrix()
    with torch.no_grad():
        theta = torch.nn.utils.parameters_to_vector(plain.parameters()) + P @ peft.phi
        torch.nn.utils.vector_to_parameters(theta, plain.parameters())
    plain(x, y).loss.backward()
    grad_theta = torch.cat([p.grad.reshape(-1) for p in plain.parameters()])
    assert torch.allclose(peft.phi.grad, P.T @ grad_theta, atol=1e-5)


def test_only_phi_is_saved_and_P_comes_back_from_the_seed(tmp_path):
    x, y = batch()
    peft = get_peft_model(tiny_gpt(), IntrinsicConfig(d=30, seed=5))
    optimizer = torch.optim.AdamW([peft.phi], lr=0.1)
    for _ in range(3):
        peft(x, y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert set(saved) == {"phi"} and saved["phi"].shape == (30,)
    loaded = PeftModel.from_pretrained(tiny_gpt(), tmp_path)
    assert loaded.config.seed == 5
    assert torch.equal(loaded.projection.matrix(), peft.projection.matrix())
    assert torch.equal(loaded(x).logits, peft(x).logits)
    other_seed = get_peft_model(tiny_gpt(), IntrinsicConfig(d=30, seed=6))
    assert not torch.allclose(other_seed.projection.matrix(), peft.projection.matrix())


def test_merge_gives_the_same_model():
    x, _ = batch()
    peft = get_peft_model(tiny_gpt(), IntrinsicConfig(d=10))
    with torch.no_grad():
        peft.phi.normal_()
    expected = peft(x).logits
    assert torch.allclose(peft.merge_and_unload()(x).logits, expected, atol=1e-5)


def test_d90_is_the_smallest_d_reaching_ninety_percent():
    assert d90([10, 100, 1000], [0.5, 0.85, 0.95], reference=1.0) == 1000
    assert d90([10, 100, 1000], [0.5, 0.9, 0.95], reference=1.0) == 100
    assert d90([10, 100], [0.5, 0.6], reference=1.0) is None
    # losses: base 0.6, full fine-tuning 0.1, so 90% of the gap means a loss ≤ 0.15
    assert d90([1, 10, 100], [-0.5, -0.2, -0.12], reference=-0.1, baseline=-0.6) == 100


def test_answer_loss_is_the_mean_over_answer_tokens():
    from minipeft.tasks import encode_example, load_examples
    from minipeft.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=2048, block_size=128, n_layer=1, n_head=2,
                          d_model=16)).eval()
    tokenizer = load_tokenizer()
    total = count = 0.0
    for example in load_examples("arithmetic", "validation")[:7]:  # answers of 2-4 tokens
        inputs, targets = encode_example(example, tokenizer)
        with torch.no_grad():
            logits = model(torch.tensor([inputs])).logits[0]
        for position, target in enumerate(targets):
            if target != -100:
                total -= torch.log_softmax(logits[position], -1)[target].item()
                count += 1
    assert answer_loss(model, "arithmetic", limit=7, batch_size=3) == pytest.approx(total / count,
                                                                                    rel=1e-5)


def test_bad_input():
    for d in (0, -3, True, 2.5, "8"):  # True would pass as 1 and hide a mistyped config
        with pytest.raises(ValueError, match=r"^d \(.*\) must be a positive integer"):
            IntrinsicConfig(d=d)
    for seed in (-1, 1.5, None):
        with pytest.raises(ValueError, match="seed"):
            IntrinsicConfig(d=5, seed=seed)
    with pytest.raises(ValueError, match="projection"):
        IntrinsicConfig(d=5, projection="sparse")
    with pytest.raises(ValueError, match="exceeds"):
        get_peft_model(tiny_gpt(), IntrinsicConfig(d=10**6))
    with pytest.raises(ValueError, match="fastfood"):
        get_peft_model(tiny_gpt(), IntrinsicConfig(d=4000, projection="dense"))


@pytest.mark.slow
def test_intrinsic_learns_sentiment_on_small():
    from minipeft.pretrained import load_pretrained
    from minipeft.tasks import chance_baseline
    from minipeft.train import train

    try:
        base = load_pretrained("small")
    except FileNotFoundError:
        pytest.skip("the small checkpoint is not built yet")
    peft = get_peft_model(base, PRESETS["intrinsic"]())
    run = train(peft, "sentiment", steps=60, lr=learning_rate("intrinsic"), eval_limit=50,
                progress=False)
    assert run.final_metric > chance_baseline("sentiment") + 0.1
    assert sum(run.losses[-3:]) / 3 < 0.5 * sum(run.losses[:3]) / 3  # training did something
