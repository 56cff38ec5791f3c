"""Bottleneck adapters: exact identity at init, a hand-written forward pass, counts, errors."""
import copy

import pytest
import torch

from minipeft.methods.adapters import PLACEMENTS, AdapterConfig
from minipeft.methods.base import CannotMergeError, get_peft_model
from minipeft.model import GPT, GPTConfig
from minipeft.paths import CHECKPOINT_DIR
from minipeft.pretrained import load_pretrained
from minipeft.tasks import chance_baseline
from helpers import fine_tune_sentiment, sentiment_answer_loss

CONFIG = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, d_model=16)
D = CONFIG.d_model


def random_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIG).eval()


def tokens(seed: int = 1, shape=(3, 12)) -> torch.Tensor:
    return torch.randint(CONFIG.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def one_training_step(model, idx):
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model(idx[:, :-1], idx[:, 1:]).loss.backward()
    optimizer.step()


def randomise_adapters(model):
    """Give every adapter weight (W_up included) a random value, reproducibly."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_zero_up_projection_is_exactly_the_base_model_and_training_changes_it(placement):
    base = random_gpt()
    idx = tokens()
    expected = base(idx).logits
    model = get_peft_model(base, AdapterConfig(placement=placement, bottleneck_size=4))
    assert torch.equal(model(idx).logits, expected)  # W_up = 0, b_up = 0: bit-for-bit
    one_training_step(model, idx)
    assert not torch.allclose(model(idx).logits, expected, atol=1e-6)
    with model.disable_adapter():
        assert torch.equal(model(idx).logits, expected)


def hand_bottleneck(adapter, h):
    """A(h) = W_up relu(W_down h + b_down) + b_up, from the raw tensors."""
    hidden = torch.relu(h @ adapter.down.weight.T + adapter.down.bias)
    return hidden @ adapter.up.weight.T + adapter.up.bias


def hand_forward(gpt, idx, after_attn=None, after_mlp=None, before=None, after=None):
    """GPT's forward written out, with optional adapter functions at the four places.

    after_attn(i, y, x_in) / after_mlp(i, y, x_in) return the sub-layer output to add to the
    residual stream (y = the frozen sub-layer's output, x_in = its LayerNorm-ed input).
    """
    B, T = idx.shape
    x = gpt.tok_emb.weight[idx] + gpt.pos_emb.weight[:T]
    if before is not None:
        x = before(x)
    for i, block in enumerate(gpt.blocks):
        a_in = block.ln1(x)
        y = block.attn(a_in)
        x = x + (after_attn(i, y, a_in) if after_attn else y)
        m_in = block.ln2(x)
        y = block.mlp(m_in)
        x = x + (after_mlp(i, y, m_in) if after_mlp else y)
    if after is not None:
        x = after(x)
    return gpt.ln_f(x) @ gpt.tok_emb.weight.T


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_forward_matches_a_hand_written_pass(placement):
    base = random_gpt()
    frozen_copy = copy.deepcopy(base)
    scale = 2.5
    model = get_peft_model(base, AdapterConfig(placement=placement, bottleneck_size=3,
                                               scale=scale))
    randomise_adapters(model)
    idx = tokens()
    blocks = model.base_model.blocks

    def sequential(sublayer):
        return lambda i, y, x_in: y + scale * hand_bottleneck(
            getattr(blocks[i], sublayer).adapter, y)

    def parallel(sublayer):
        return lambda i, y, x_in: y + scale * hand_bottleneck(
            getattr(blocks[i], sublayer).adapter, x_in)

    hooks = {
        "houlsby": dict(after_attn=sequential("attn"), after_mlp=sequential("mlp")),
        "pfeiffer": dict(after_mlp=sequential("mlp")),
        "bapna": dict(after_attn=sequential("attn")),
        "parallel": dict(after_mlp=parallel("mlp")),
        "io": dict(before=lambda x: x + scale * hand_bottleneck(blocks[0].input_adapter, x),
                   after=lambda x: x + scale * hand_bottleneck(blocks[-1].output_adapter, x)),
    }[placement]
    expected = hand_forward(frozen_copy, idx, **hooks)
    torch.testing.assert_close(model(idx).logits, expected, rtol=1e-5, atol=1e-5)


def test_parallel_beside_both_sublayers():
    base = random_gpt()
    frozen_copy = copy.deepcopy(base)
    model = get_peft_model(base, AdapterConfig(placement="parallel", parallel_to="both",
                                               bottleneck_size=2, scale=4.0))
    randomise_adapters(model)
    blocks, idx = model.base_model.blocks, tokens()
    expected = hand_forward(
        frozen_copy, idx,
        after_attn=lambda i, y, x: y + 4.0 * hand_bottleneck(blocks[i].attn.adapter, x),
        after_mlp=lambda i, y, x: y + 4.0 * hand_bottleneck(blocks[i].mlp.adapter, x))
    torch.testing.assert_close(model(idx).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("placement, adapters_per_block", [
    ("houlsby", 2), ("pfeiffer", 1), ("bapna", 1), ("parallel", 1)])
@pytest.mark.parametrize("blocks", [{}, dict(top_layers=1), dict(layers_to_transform=[0]),
                                    dict(layers_to_transform=0)])
def test_trainable_count_matches_the_formula(placement, adapters_per_block, blocks):
    model = get_peft_model(random_gpt(), AdapterConfig(placement=placement,
                                                       reduction_factor=4, **blocks))
    m = D // 4
    n_blocks = 1 if blocks else CONFIG.n_layer
    per_adapter = 2 * D * m + m + D  # W_down, W_up, b_down, b_up
    trainable, total = model.count_parameters()
    assert trainable == n_blocks * adapters_per_block * per_adapter
    assert total == random_gpt().num_parameters() + trainable


def test_io_adapters_sit_at_the_two_ends():
    model = get_peft_model(random_gpt(), AdapterConfig(placement="io", bottleneck_size=5))
    first, last = model.base_model.blocks[0], model.base_model.blocks[-1]
    assert first.input_adapter is not None and first.output_adapter is None
    assert last.input_adapter is None and last.output_adapter is not None
    assert model.count_parameters()[0] == 2 * (2 * D * 5 + 5 + D)


def test_io_adapter_on_a_one_block_model():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, d_model=16))
    model = get_peft_model(gpt, AdapterConfig(placement="io", bottleneck_size=2))
    block = model.base_model.blocks[0]
    assert block.input_adapter is not None and block.output_adapter is not None


def test_only_adapters_train_and_the_base_is_untouched():
    base = random_gpt()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, AdapterConfig(placement="houlsby", bottleneck_size=4))
    assert all("adapter" in n for n, p in model.named_parameters() if p.requires_grad)
    one_training_step(model, tokens())
    after = {k.replace(".base_layer", ""): v for k, v in model.base_model.state_dict().items()
             if "adapter" not in k}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_generation_with_a_cache_matches_generation_without(tmp_path):
    model = get_peft_model(random_gpt(), AdapterConfig(placement="houlsby", bottleneck_size=4))
    randomise_adapters(model)
    idx = tokens(shape=(2, 5))
    cached = model.generate(idx, 8, temperature=0)
    uncached = model.generate(idx, 8, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("kwargs, message", [
    (dict(placement="sideways"), "unknown adapter placement"),
    (dict(placement="houlsby", parallel_to="mlp"), "only applies to placement='parallel'"),
    (dict(placement="parallel", parallel_to="ln"), "unknown parallel_to"),
    (dict(placement="io", top_layers=1), "takes no block choice"),
    (dict(placement="io", layers_to_transform=[0]), "takes no block choice"),
    (dict(target_modules=["q"]), "not by target_modules"),
    (dict(activation="swish"), "unknown activation"),
    (dict(reduction_factor=0), "reduction_factor must be"),
])
def test_bad_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**kwargs)


def test_a_bottleneck_narrower_than_one_is_rejected():
    with pytest.raises(ValueError, match="leaves no bottleneck"):
        get_peft_model(random_gpt(), AdapterConfig(reduction_factor=32))


def test_adapters_cannot_be_merged():
    model = get_peft_model(random_gpt(), AdapterConfig(bottleneck_size=2))
    with pytest.raises(CannotMergeError, match="non-linearity"):
        model.merge_and_unload()


def test_a_misspelt_placement_in_a_saved_config_is_rejected():
    with pytest.raises(ValueError, match="unknown adapter placement"):
        AdapterConfig.from_dict({**AdapterConfig().to_dict(), "placement": "pfeifer"})


# --------------------------------------------------------------------------------------
# Fine-tuning the pretrained `small` model (skipped until the checkpoint exists)
# --------------------------------------------------------------------------------------
SMALL = CHECKPOINT_DIR / "small.safetensors"


@pytest.fixture(scope="module")
def sentiment_runs():
    """{preset: (accuracy, answer loss)} after 80 steps at its rate, and the base's loss."""
    if not SMALL.is_file():
        pytest.skip("data/checkpoints/small.safetensors is not built yet")
    runs = {"base": (None, sentiment_answer_loss(load_pretrained("small")))}
    for name in ["houlsby", "pfeiffer", "parallel", "io_adapter"]:
        model, result = fine_tune_sentiment(name, steps=80)
        runs[name] = (result.final_metric, sentiment_answer_loss(model))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["houlsby", "pfeiffer", "parallel", "io_adapter"])
def test_small_learns_sentiment(sentiment_runs, preset):
    """Above chance (the base is at chance: its corpus never names the task's labels), and
    at most half the base's answer loss."""
    accuracy, loss = sentiment_runs[preset]
    assert accuracy > chance_baseline("sentiment") + 0.1
    assert loss < 0.5 * sentiment_runs["base"][1]
