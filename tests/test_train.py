"""The training loop: schedule, determinism, partial training, hooks, batching."""
import math

import pytest
import torch

from minipeft.model import GPT, GPTConfig, IGNORE_INDEX
from minipeft.train import lm_windows, lr_at, pad_batch, random_batches, train_loop

CONFIG = GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, d_model=16)


def toy_batches(seed=0):
    """A learnable stream: token t+1 = (token t + 1) mod V."""
    tokens = torch.arange(2000) % CONFIG.vocab_size
    return lm_windows(tokens, CONFIG.block_size, batch_size=4, seed=seed)


def fresh_model(seed=0):
    torch.manual_seed(seed)
    return GPT(CONFIG)


def test_schedule_is_linear_warmup_then_cosine():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.0, abs=1e-12)


def test_same_seed_gives_identical_loss_curve():
    a = train_loop(fresh_model(), toy_batches(), 15, lr=3e-3, progress=False)
    b = train_loop(fresh_model(), toy_batches(), 15, lr=3e-3, progress=False)
    c = train_loop(fresh_model(), toy_batches(seed=1), 15, lr=3e-3, progress=False)
    assert a.losses == b.losses
    assert a.losses != c.losses


def test_loss_goes_down_on_a_learnable_stream():
    result = train_loop(fresh_model(), toy_batches(), 60, lr=1e-2, progress=False)
    assert result.losses[-1] < 0.5 * result.losses[0]


def test_only_trainable_parameters_change():
    model = fresh_model()
    for p in model.parameters():
        p.requires_grad_(False)
    model.blocks[0].mlp.fc.weight.requires_grad_(True)
    before = {n: p.clone() for n, p in model.named_parameters()}
    train_loop(model, toy_batches(), 5, lr=1e-2, progress=False)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == (name != "blocks.0.mlp.fc.weight"), name


def test_no_trainable_parameters_is_a_clear_error():
    model = fresh_model()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_loop(model, toy_batches(), 1, progress=False)


def test_hooks_are_called():
    class Hooked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gpt, self.calls = fresh_model(), []

        def forward(self, x, y):
            return self.gpt(x, y)

        def regularization_loss(self):
            return 100.0 * self.gpt.ln_f.bias.pow(2).sum()

        def after_optimizer_step(self, step, total):
            assert self.gpt.ln_f.bias.grad is not None  # gradients still there
            self.calls.append((step, total))

    model = Hooked()
    train_loop(model, toy_batches(), 3, progress=False)
    assert model.calls == [(0, 3), (1, 3), (2, 3)]


def test_train_loop_leaves_the_callers_random_state_alone():
    """The loop seeds its own copy of the generators: what the caller draws next is what it
    would have drawn without the training run in between."""
    torch.manual_seed(123)
    expected = torch.rand(5)  # the draw with no training in between

    torch.manual_seed(123)
    model = fresh_model(seed=7)
    torch.manual_seed(123)
    train_loop(model, toy_batches(), 3, lr=1e-3, seed=0, progress=False)
    assert torch.equal(torch.rand(5), expected)


def test_the_seed_still_fixes_what_the_loop_draws():
    """The private generator is seeded from `seed`: a model whose forward draws random
    numbers (dropout) trains to the same weights whatever the caller's state, and to other
    weights with another seed."""
    def trained(caller_seed, seed):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, d_model=16,
                              dropout=0.3))
        torch.manual_seed(caller_seed)
        train_loop(model, toy_batches(), 3, lr=1e-2, seed=seed, progress=False)
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    assert torch.equal(trained(caller_seed=1, seed=5), trained(caller_seed=2, seed=5))
    assert not torch.equal(trained(caller_seed=1, seed=5), trained(caller_seed=1, seed=6))


def test_explicit_groups_keep_their_own_weight_decay():
    from minipeft.train import make_optimizer

    model = fresh_model()
    vectors = [p for p in model.parameters() if p.dim() == 1]
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    optimizer = make_optimizer(model, 1e-3, 0.1, [{"params": vectors, "weight_decay": 0.5},
                                                  {"params": matrices, "lr": 2e-3}])
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert all(decays[id(p)] == 0.5 for p in vectors)  # set by the caller: kept
    assert all(decays[id(p)] == 0.1 and rates[id(p)] == 2e-3 for p in matrices)
    assert len(decays) == len(vectors) + len(matrices)  # every parameter exactly once


def test_evaluation_runs_every_n_steps_and_at_the_end():
    result = train_loop(fresh_model(), toy_batches(), 7, evaluate=lambda: 0.5, eval_every=3,
                        progress=False)
    assert [s for s, _ in result.evals] == [3, 6, 7]


def test_pad_batch_pads_right_and_ignores_padding():
    inputs, targets = pad_batch([([1, 2, 3], [-100, 3, 9]), ([4], [5])], pad_id=0)
    assert inputs.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert targets.tolist() == [[-100, 3, 9], [5, IGNORE_INDEX, IGNORE_INDEX]]


def test_random_batches_are_reproducible():
    pairs = [([i], [i]) for i in range(50)]
    a, b = random_batches(pairs, 4, 0, seed=3), random_batches(pairs, 4, 0, seed=3)
    for _ in range(3):
        assert torch.equal(next(a)[0], next(b)[0])


def test_lm_windows_targets_are_inputs_shifted_by_one():
    x, y = next(lm_windows(torch.arange(100), 8, 3, seed=0))
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, x + 1)


# --------------------------------------------------------------------------------------
# train_loop against a loop written out by hand
# --------------------------------------------------------------------------------------
def scheduled_lr(s: int, total: int, peak: float, warmup: int) -> float:
    """The rate of update s = 1, 2, ..., total: linear warm-up to `peak` over the first
    `warmup` updates, then half a cosine from `peak` towards 0 (Loshchilov & Hutter, 2017,
    "SGDR", Eq. 5 without restarts; nanoGPT's get_lr)."""
    if s <= warmup:
        return peak * s / warmup
    progress = (s - 1 - warmup) / (total - warmup)  # 0 at the first update after warm-up
    return peak / 2 * (1 + math.cos(math.pi * progress))


def clip_by_global_norm(grads: list[torch.Tensor], max_norm: float) -> tuple[list, float]:
    """g ← g · c / ‖g‖ when the norm of all gradients together, ‖g‖, exceeds c (Pascanu,
    Mikolov & Bengio, 2013, Algorithm 1). The 1e-6 guards against ‖g‖ = 0, as in torch."""
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    if norm <= max_norm:
        return grads, norm
    return [g * (max_norm / (norm + 1e-6)) for g in grads], norm


def adamw_step(params, grads, state, t: int, lr: float, weight_decay: float,
               betas=(0.9, 0.999), eps=1e-8, decay_vectors: bool = False) -> None:
    """One AdamW update (Loshchilov & Hutter, 2019, "Decoupled Weight Decay
    Regularization", Algorithm 2), at step t = 1, 2, ...:
        θ ← θ − lr·λ·θ;   m ← β₁m + (1−β₁)g;   v ← β₂v + (1−β₂)g²
        θ ← θ − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)
    with λ = 0 for 1-D tensors (biases, LayerNorm gains) unless decay_vectors, as nanoGPT's
    configure_optimizers groups them."""
    beta1, beta2 = betas
    for p, g in zip(params, grads):
        decay = weight_decay if (p.dim() >= 2 or decay_vectors) else 0.0
        m, v = state.setdefault(id(p), (torch.zeros_like(p), torch.zeros_like(p)))
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        state[id(p)] = (m, v)
        m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        p.mul_(1 - lr * decay)
        p.sub_(lr * m_hat / (v_hat.sqrt() + eps))


@pytest.mark.parametrize("decay_vectors", [False, True],
                         ids=["fine-tuning: matrices decay", "pretraining: every tensor decays"])
def test_train_loop_matches_a_hand_written_adamw_clipping_and_schedule_loop(decay_vectors):
    """Every parameter after a few steps of train_loop equals a loop written from the
    papers' equations. Weight decay (of matrices, and of vectors only with decay_vectors),
    clipping (it triggers at every step here) and the warm-up/cosine rate each change the
    result at this tolerance, so dropping one, decaying a LayerNorm gain or bias in
    fine-tuning, or shifting the schedule by a step, fails this test."""
    steps, warmup, peak, decay, clip = 6, 2, 1e-2, 0.1, 0.05
    stream = toy_batches()
    batches = [next(stream) for _ in range(steps)]

    def trainable_but_key_bias(model):
        # Matrices, biases and LayerNorm gains train. Not the key bias: softmax is blind to
        # it (q·(k + b) shifts every score of a query by the same q·b), so its gradient is
        # 0 up to rounding and Adam's g/√v turns that rounding into full-size steps.
        for name, p in model.named_parameters():
            p.requires_grad_(not name.endswith("attn.k.bias"))
        return model

    model = trainable_but_key_bias(fresh_model())
    train_loop(model, iter(batches), steps, lr=peak, warmup=warmup, weight_decay=decay,
               grad_clip=clip, progress=False, decay_vectors=decay_vectors)

    reference = trainable_but_key_bias(fresh_model())
    assert any(p.dim() == 1 and p.requires_grad for p in reference.parameters())
    params = [p for p in reference.parameters() if p.requires_grad]
    state, norms = {}, []
    for s, (inputs, targets) in enumerate(batches, start=1):
        grads = torch.autograd.grad(reference(inputs, targets).loss, params)
        grads, norm = clip_by_global_norm(grads, clip)
        norms.append(norm)
        with torch.no_grad():
            adamw_step(params, grads, state, s, scheduled_lr(s, steps, peak, warmup), decay,
                       decay_vectors=decay_vectors)
    assert min(norms) > clip  # clipping acted at every step

    # Relative to each tensor's norm: the two loops round differently in float32, and Adam's
    # g/√v magnifies that for entries whose gradients are tiny (seen: 4e-8 absolute, 1e-7
    # relative). A dropped weight decay alone moves the weights by lr·λ = 1e-3 per step.
    trained = dict(model.named_parameters())
    for name, expected in reference.named_parameters():
        if not expected.requires_grad:
            assert torch.equal(trained[name], expected), name
            continue
        error = float((trained[name] - expected).detach().norm() / expected.detach().norm())
        assert error < 1e-6, f"{name}: relative difference {error:.2e}"
