"""Soft prompts, prefix tuning, deep prompts, and nearest-token analysis.

The reference computations are written out here: a GPT forward pass with explicit
per-head attention (so the prefix's head layout is checked), hand-made prompt sequences and
greedy decoding loops that never go through the PEFT wrappers.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from minipeft.analysis import nearest_tokens
from minipeft.methods.base import CannotMergeError, PeftModel, get_peft_model
from minipeft.methods.prompts import (DeepPromptConfig, PrefixTuningConfig,
                                      PrefixTuningModel, PromptTuningConfig,
                                      mixed_task_forward)
from minipeft.model import IGNORE_INDEX, GPT, GPTConfig
from minipeft.paths import CHECKPOINT_DIR
from minipeft.pretrained import load_pretrained
from minipeft.tasks import chance_baseline
from minipeft.tokenizer import load_tokenizer
from helpers import fine_tune_sentiment, sentiment_answer_loss

CONFIG = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, d_model=16)
# Text and label initialisations need the shipped tokenizer's vocabulary.
VOCAB_CONFIG = GPTConfig(vocab_size=2048, block_size=32, n_layer=2, n_head=2, d_model=16)
D, L = CONFIG.d_model, CONFIG.n_layer


def random_gpt(config: GPTConfig = CONFIG, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config).eval()


def tokens(seed: int = 1, shape=(3, 10), vocab: int = CONFIG.vocab_size) -> torch.Tensor:
    return torch.randint(vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def hand_forward(gpt: GPT, x: torch.Tensor, prefixes: dict | None = None) -> torch.Tensor:
    """Logits of GPT on embeddings x (B, T, d), each head's attention written out.

    prefixes: {layer: (Pk, Pv)} with Pk, Pv (P, d); head j uses columns j·d_h .. (j+1)·d_h.
    """
    B, T, d = x.shape
    n_head = gpt.config.n_head
    d_head = d // n_head
    x = x + gpt.pos_emb.weight[:T]
    for i, block in enumerate(gpt.blocks):
        a = block.ln1(x)
        q, k, v = block.attn.q(a), block.attn.k(a), block.attn.v(a)  # (B, T, d)
        n_prefix = 0
        if prefixes and i in prefixes:
            pk, pv = prefixes[i]
            n_prefix = pk.shape[0]
            k = torch.cat([pk.expand(B, -1, -1), k], dim=1)
            v = torch.cat([pv.expand(B, -1, -1), v], dim=1)
        key_pos = torch.arange(n_prefix + T) - n_prefix  # prefix keys at negative positions
        allowed = key_pos[None, :] <= torch.arange(T)[:, None]  # (T, P+T)
        heads = []
        for j in range(n_head):
            cols = slice(j * d_head, (j + 1) * d_head)
            scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(d_head)
            scores = scores.masked_fill(~allowed, float("-inf"))
            heads.append(scores.softmax(dim=-1) @ v[..., cols])
        x = x + block.attn.o(torch.cat(heads, dim=-1))
        x = x + block.mlp(block.ln2(x))
    return gpt.ln_f(x) @ gpt.tok_emb.weight.T


def greedy_by_hand(logits_of, idx: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy decoding without a cache: logits_of(all tokens so far) → (B, T, V)."""
    out = idx
    for _ in range(n_new):
        next_id = logits_of(out)[:, -1].argmax(dim=-1, keepdim=True)
        out = torch.cat([out, next_id], dim=1)
    return out


# --------------------------------------------------------------------------------------
# Soft prompt tuning
# --------------------------------------------------------------------------------------
def prompt_model(k: int = 4, **kwargs):
    base = random_gpt()
    return base, get_peft_model(base, PromptTuningConfig(num_virtual_tokens=k, **kwargs))


def with_prompt(model, base, idx):
    """[P; E(x)] built by hand: (B, k+T, d)."""
    B = idx.shape[0]
    return torch.cat([model.prompt.detach().expand(B, -1, -1), base.tok_emb.weight[idx]], dim=1)


def test_input_logits_equal_the_frozen_model_on_the_concatenation():
    base, model = prompt_model(k=4)
    idx = tokens()
    expected = base(inputs_embeds=with_prompt(model, base, idx)).logits[:, 4:]
    got = model(idx).logits
    assert got.shape == (3, 10, CONFIG.vocab_size)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got, hand_forward(base, with_prompt(model, base, idx))[:, 4:],
                               rtol=1e-5, atol=1e-5)


def test_loss_is_the_cross_entropy_of_the_input_positions():
    base, model = prompt_model(k=3)
    idx = tokens(shape=(2, 9))
    targets = idx.roll(-1, dims=1)
    targets[:, :4] = IGNORE_INDEX
    logits = base(inputs_embeds=with_prompt(model, base, idx)).logits[:, 3:]
    expected = F.cross_entropy(logits[:, 4:].reshape(-1, CONFIG.vocab_size),
                               targets[:, 4:].reshape(-1))
    torch.testing.assert_close(model(idx, targets).loss, expected)


def test_the_prompt_lengthens_every_attention_by_k():
    base, model = prompt_model(k=5)
    idx = tokens(shape=(2, 7))
    cache = model(idx, cache=model.new_cache()).cache
    base_cache = base(idx, cache=base.new_cache()).cache
    assert base_cache.layers[0].k.shape[2] == 7
    assert all(layer.k.shape[2] == 5 + 7 for layer in cache.layers)
    assert cache.n_seen == 12  # the prompt holds positions 0..4, the input 5..11


def test_the_prompt_uses_the_first_positions_of_the_context_window():
    base, model = prompt_model(k=5)
    model(tokens(shape=(1, CONFIG.block_size - 5)))  # exactly fills the window
    with pytest.raises(ValueError, match=r"soft prompt of 5 vectors \+ 28 input tokens"):
        model(tokens(shape=(1, CONFIG.block_size - 4)))
    with pytest.raises(ValueError, match=r"28 tokens \(20 given \+ 8 to generate\)"):
        model.generate(tokens(shape=(1, 20)), 8)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_equals_greedy_decoding_with_the_prompt_prepended_by_hand(use_cache):
    base, model = prompt_model(k=4)
    with torch.no_grad():
        model.prompt.mul_(20)  # a prompt strong enough to change what is generated
    idx = tokens(shape=(2, 5))
    expected = greedy_by_hand(
        lambda out: base(inputs_embeds=with_prompt(model, base, out)).logits, idx, 9)
    assert torch.equal(model.generate(idx, 9, temperature=0, use_cache=use_cache), expected)
    assert not torch.equal(base.generate(idx, 9, temperature=0), expected)


def test_trainable_count_is_k_times_d_and_only_the_prompt_trains():
    base, model = prompt_model(k=7)
    assert model.count_parameters() == (7 * D, base.num_parameters() + 7 * D)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt"]


def test_disabled_prompt_is_the_base_model():
    base, model = prompt_model(k=4)
    idx = tokens(shape=(2, 5))
    with model.disable_adapter():
        assert torch.equal(model(idx).logits, base(idx).logits)
        assert torch.equal(model.generate(idx, 4, temperature=0),
                           base.generate(idx, 4, temperature=0))


def test_random_init_is_uniform_in_the_range():
    _, model = prompt_model(k=30, init="random", init_range=0.5)  # 30 < block_size
    assert model.prompt.abs().max() <= 0.5
    assert model.prompt.std() > 0.2  # uniform on [-0.5, 0.5] has std ≈ 0.29


def test_text_init_repeats_the_text_tokens(tokenizer):
    base = random_gpt(VOCAB_CONFIG)
    text = "Classify the sentiment:"
    ids = tokenizer.encode(text)
    k = len(ids) + 3
    model = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=k, init="text",
                                                    init_text=text))
    expected = base.tok_emb.weight[ids + ids[:3]]
    assert torch.equal(model.prompt.detach(), expected)


def test_label_init_uses_the_label_words_then_the_vocabulary(tokenizer):
    base = random_gpt(VOCAB_CONFIG)
    words = [" positive", " negative", " xqzv"]  # the last is several tokens: averaged
    assert len(tokenizer.encode(" xqzv")) > 1
    model = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=5, init="labels",
                                                    label_words=words))
    E = base.tok_emb.weight
    for row, word in zip(model.prompt, words):
        ids = tokenizer.encode(word)
        torch.testing.assert_close(row, sum(E[i] for i in ids) / len(ids))
    for row in model.prompt[3:]:
        assert (E == row).all(dim=1).any()


def test_an_init_text_longer_than_the_prompt_is_rejected(tokenizer):
    text = "Classify the sentiment:"
    n_tokens = len(tokenizer.encode(text))
    with pytest.raises(ValueError, match=f"is {n_tokens} tokens long but the prompt has "
                                         f"num_virtual_tokens={n_tokens - 1}"):
        get_peft_model(random_gpt(VOCAB_CONFIG), PromptTuningConfig(
            num_virtual_tokens=n_tokens - 1, init="text", init_text=text))


def test_text_init_on_a_model_of_another_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="tokenizer has 2048 tokens"):
        get_peft_model(random_gpt(), PromptTuningConfig(init="text", init_text="hi"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(init="glove"), "unknown prompt init"),
    (dict(init_text="hello"), "exactly when init='text'"),
    (dict(init="text"), "exactly when init='text'"),
    (dict(init="labels"), "exactly when init='labels'"),
    (dict(num_virtual_tokens=0), "num_virtual_tokens must be"),
    (dict(target_modules=["q"]), "leave target_modules=None"),
    (dict(top_layers=1), "input only"),
    (dict(layers_to_transform=0), "input only"),
    (dict(init="vocab", init_range=0.1), "needs init='random'"),
    (dict(init="random", init_range=0.0), "init_range must be positive"),
])
def test_bad_prompt_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptTuningConfig(**kwargs)


def test_more_labels_than_prompt_vectors_is_rejected():
    with pytest.raises(ValueError, match="between 1 and num_virtual_tokens"):
        get_peft_model(random_gpt(VOCAB_CONFIG), PromptTuningConfig(
            num_virtual_tokens=1, init="labels", label_words=[" yes", " no"]))


def test_prompts_cannot_be_merged():
    _, model = prompt_model()
    with pytest.raises(CannotMergeError, match="cannot be merged"):
        model.merge_and_unload()


# --------------------------------------------------------------------------------------
# Prefix tuning
# --------------------------------------------------------------------------------------
def hand_reparameterized_table(model) -> dict:
    """{layer: (Pk, Pv)} from P' and the MLP's raw tensors: MLP(P') = W2 tanh(W1 P' + b1) + b2."""
    first, last = model.prefix_mlp[0], model.prefix_mlp[2]
    flat = torch.tanh(model.prefix_input @ first.weight.T + first.bias) @ last.weight.T + last.bias
    # flat row i = [layer 0 keys | layer 0 values | layer 1 keys | ...] for prefix position i
    return {layer: (flat[:, 2 * j * D:(2 * j + 1) * D], flat[:, (2 * j + 1) * D:(2 * j + 2) * D])
            for j, layer in enumerate(model.layer_ids)}


@pytest.mark.parametrize("top_layers", [None, 1])
def test_prefix_counts_match_the_formulas(top_layers):
    P, H = 6, 12
    n_layers = L if top_layers is None else 1
    direct = get_peft_model(random_gpt(), PrefixTuningConfig(
        num_virtual_tokens=P, reparameterize=False, top_layers=top_layers))
    assert direct.count_parameters()[0] == n_layers * 2 * P * D
    mlp = get_peft_model(random_gpt(), PrefixTuningConfig(
        num_virtual_tokens=P, hidden_size=H, top_layers=top_layers))
    assert mlp.count_parameters()[0] == (P * D + D * H + H + H * 2 * n_layers * D
                                         + 2 * n_layers * D)
    mlp.fold_reparameterization()
    assert mlp.count_parameters()[0] == n_layers * 2 * P * D


@pytest.mark.parametrize("layers_to_transform", [None, [1]])
def test_reparameterized_prefix_forward_matches_a_hand_computation(layers_to_transform):
    base = random_gpt()
    model = get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=3, hidden_size=8,
                                                    layers_to_transform=layers_to_transform))
    idx = tokens()
    with torch.no_grad():
        expected = hand_forward(base, base.tok_emb.weight[idx], hand_reparameterized_table(model))
    torch.testing.assert_close(model(idx).logits, expected, rtol=1e-5, atol=1e-5)


def test_folding_the_mlp_keeps_the_logits_and_saves_only_the_prefix(tmp_path):
    base = random_gpt()
    model = get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=4, hidden_size=8))
    idx = tokens()
    before = model(idx).logits
    model.fold_reparameterization()
    assert torch.equal(model(idx).logits, before)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prefix_kv"]
    assert model.config.reparameterize is False and model.config.hidden_size is None
    with pytest.raises(ValueError, match="no re-parameterisation MLP"):
        model.fold_reparameterization()
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(random_gpt(), tmp_path)
    assert isinstance(loaded, PrefixTuningModel) and not loaded.reparameterized
    assert torch.equal(loaded(idx).logits, before)


def test_direct_prefix_starts_from_real_token_keys_and_values():
    base = random_gpt()
    torch.manual_seed(11)
    model = get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=4, reparameterize=False))
    torch.manual_seed(11)
    ids = torch.randint(CONFIG.vocab_size, (4,))
    block = base.blocks[0]
    x0 = block.ln1(base.tok_emb.weight[ids] + base.pos_emb.weight[:4])  # LN₁(E[ids] + pos)
    torch.testing.assert_close(model.prefix_kv[0, 0], block.attn.k(x0))
    torch.testing.assert_close(model.prefix_kv[0, 1], block.attn.v(x0))


def test_direct_prefix_forward_and_generation_match_the_hand_computation():
    base = random_gpt()
    model = get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=3, reparameterize=False))
    with torch.no_grad():
        model.prefix_kv.mul_(8)  # strong enough to change what is generated
    table = {i: (model.prefix_kv[i, 0].detach(), model.prefix_kv[i, 1].detach())
             for i in range(L)}
    idx = tokens(shape=(2, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(idx).logits,
                                   hand_forward(base, base.tok_emb.weight[idx], table),
                                   rtol=1e-5, atol=1e-5)
        expected = greedy_by_hand(
            lambda out: hand_forward(base, base.tok_emb.weight[out], table), idx, 8)
    assert torch.equal(model.generate(idx, 8, temperature=0), expected)
    assert torch.equal(model.generate(idx, 8, temperature=0, use_cache=False), expected)


def test_a_prefix_takes_no_position_of_the_context_window():
    _, model = prompt_model()  # for contrast: a soft prompt of 4 cannot take a full window
    with pytest.raises(ValueError):
        model(tokens(shape=(1, CONFIG.block_size)))
    prefix = get_peft_model(random_gpt(), PrefixTuningConfig(num_virtual_tokens=4))
    cache = prefix(tokens(shape=(1, CONFIG.block_size)), cache=prefix.new_cache()).cache
    assert cache.n_seen == CONFIG.block_size and cache.layers[0].k.shape[2] == 4 + CONFIG.block_size


@pytest.mark.parametrize("kwargs, message", [
    (dict(reparameterize=False, hidden_size=8), "needs reparameterize=True"),
    (dict(hidden_size=0), "hidden_size must be"),
    (dict(num_virtual_tokens=0), "num_virtual_tokens must be"),
    (dict(target_modules=["k"]), "leave target_modules=None"),
])
def test_bad_prefix_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrefixTuningConfig(**kwargs)


def test_a_second_prefix_argument_is_rejected():
    model = get_peft_model(random_gpt(), PrefixTuningConfig())
    with pytest.raises(ValueError, match="supplies its own prefix"):
        model(tokens(), prefix=[None, None])


# --------------------------------------------------------------------------------------
# Deep prompts
# --------------------------------------------------------------------------------------
def test_deep_prompt_keys_values_come_from_the_frozen_layer():
    base = random_gpt()
    model = get_peft_model(base, DeepPromptConfig(num_virtual_tokens=5, layers_to_transform=[0, 1]))
    assert model.count_parameters()[0] == L * 5 * D
    table = {}
    for i, block in enumerate(base.blocks):
        p = model.deep_prompts[i].detach()
        h = F.layer_norm(p, (D,), block.ln1.weight, block.ln1.bias, block.ln1.eps)
        table[i] = (h @ block.attn.k.weight.T + block.attn.k.bias,
                    h @ block.attn.v.weight.T + block.attn.v.bias)
    idx = tokens()
    with torch.no_grad():
        expected = hand_forward(base, base.tok_emb.weight[idx], table)
    torch.testing.assert_close(model(idx).logits, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.generate(idx, 6, temperature=0),
                       model.generate(idx, 6, temperature=0, use_cache=False))
    with model.disable_adapter():
        assert torch.equal(model(idx).logits, base(idx).logits)


def test_deep_prompt_count_with_some_layers():
    top = get_peft_model(random_gpt(), DeepPromptConfig(num_virtual_tokens=3, top_layers=1))
    assert top.layer_ids == [L - 1] and top.count_parameters()[0] == 3 * D
    # An int in layers_to_transform is one block index, as in peft: block 0, not the top.
    first = get_peft_model(random_gpt(),
                           DeepPromptConfig(num_virtual_tokens=3, layers_to_transform=0))
    assert first.layer_ids == [0] and first.count_parameters()[0] == 3 * D


# --------------------------------------------------------------------------------------
# Mixed-task inference: one batch, a different task's prompt per example
# --------------------------------------------------------------------------------------
def task_prompts(base: GPT, k: int = 3) -> dict:
    """Three prompt models on one frozen base, each with its own random prompt."""
    models = {}
    for seed, name in enumerate(["sentiment", "paraphrase", "arithmetic"]):
        torch.manual_seed(10 + seed)
        models[name] = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=k))
    return models


def test_a_mixed_batch_equals_each_prompt_run_on_its_own():
    base = random_gpt()
    models = task_prompts(base)
    names = ["paraphrase", "sentiment", "arithmetic", "sentiment"]
    x = tokens(shape=(4, 9))
    targets = tokens(seed=2, shape=(4, 9))
    mixed = mixed_task_forward(models, names, x, targets)
    alone = torch.cat([models[name](x[b:b + 1]).logits for b, name in enumerate(names)])
    assert (mixed.logits - alone).abs().max() <= 1e-6
    by_hand = torch.cat([hand_forward(base, torch.cat([models[name].prompt[None],
                                                        base.tok_emb(x[b:b + 1])], dim=1))
                         for b, name in enumerate(names)])[:, 3:]
    torch.testing.assert_close(mixed.logits, by_hand, atol=1e-5, rtol=1e-5)
    expected_loss = F.cross_entropy(alone.reshape(-1, alone.shape[-1]), targets.reshape(-1))
    assert mixed.loss.item() == pytest.approx(expected_loss.item(), abs=1e-6)


def test_mixed_batch_rejects_unknown_names_and_a_wrong_count():
    models = task_prompts(random_gpt())
    x = tokens(shape=(2, 5))
    with pytest.raises(ValueError, match=r"unknown adapter names \['qa'\]"):
        mixed_task_forward(models, ["sentiment", "qa"], x)
    with pytest.raises(ValueError, match="3 adapter names for a batch of 2"):
        mixed_task_forward(models, ["sentiment"] * 3, x)


def test_mixed_batch_needs_one_base_and_one_prompt_length():
    base = random_gpt()
    models = task_prompts(base)
    x = tokens(shape=(2, 5))
    other = {**models, "other": get_peft_model(random_gpt(seed=1), PromptTuningConfig(
        num_virtual_tokens=3))}
    with pytest.raises(ValueError, match="different base models"):
        mixed_task_forward(other, ["sentiment", "other"], x)
    longer = {**models, "long": get_peft_model(base, PromptTuningConfig(num_virtual_tokens=5))}
    with pytest.raises(ValueError, match="different lengths"):
        mixed_task_forward(longer, ["sentiment", "long"], x)
    with pytest.raises(ValueError, match="more than the context window"):
        mixed_task_forward(models, ["sentiment"], tokens(shape=(1, CONFIG.block_size)))


# --------------------------------------------------------------------------------------
# Nearest tokens (analysis)
# --------------------------------------------------------------------------------------
def test_nearest_tokens_match_a_brute_force_search(tokenizer):
    base = random_gpt(VOCAB_CONFIG)
    E = base.tok_emb.weight.detach()
    ids = [5, 300, 1000]
    noise = torch.randn(3, VOCAB_CONFIG.d_model, generator=torch.Generator().manual_seed(0))
    vectors = E[ids] + 0.001 * noise
    result = nearest_tokens(vectors, base, tokenizer, k=4)
    for row, vector in zip(result, vectors):
        cosines = [float(vector @ e / (vector.norm() * e.norm())) for e in E]
        best = sorted(range(len(E)), key=lambda i: -cosines[i])[:4]
        assert [text for text, _ in row] == [tokenizer.token_text(i) for i in best]
        assert [c for _, c in row] == pytest.approx([cosines[i] for i in best], abs=1e-5)
    assert [row[0][0] for row in result] == [tokenizer.token_text(i) for i in ids]


def test_nearest_tokens_rejects_vectors_of_the_wrong_width(tokenizer):
    with pytest.raises(ValueError, match="vectors must be"):
        nearest_tokens(torch.zeros(2, 7), random_gpt(VOCAB_CONFIG), tokenizer)


# --------------------------------------------------------------------------------------
# Fine-tuning the pretrained `small` model (skipped until the checkpoint exists)
# --------------------------------------------------------------------------------------
SMALL = CHECKPOINT_DIR / "small.safetensors"
# Steps per preset, at the method's own rate (minipeft.methods.learning_rate). The soft prompt
# first learns to answer with a label word and only then which one, so it needs more steps
# than the deep methods; so does the prefix MLP at its small rate (at 3e-3 it stalls).
STEPS = {"prompt": 150, "prefix": 200, "deep_prompt": 80}


@pytest.fixture(scope="module")
def sentiment_runs():
    """{preset: (accuracy, answer loss, model)} after its schedule, and the base's loss."""
    if not SMALL.is_file():
        pytest.skip("data/checkpoints/small.safetensors is not built yet")
    runs = {"base": (None, sentiment_answer_loss(load_pretrained("small")), None)}
    for name, steps in STEPS.items():
        model, result = fine_tune_sentiment(name, steps)
        runs[name] = (result.final_metric, sentiment_answer_loss(model), model)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(STEPS))
def test_small_learns_sentiment(sentiment_runs, preset):
    """Above chance (the base is at chance: its corpus never names the task's labels), and
    at most half the base's answer loss."""
    accuracy, loss, _ = sentiment_runs[preset]
    assert accuracy > chance_baseline("sentiment") + 0.1
    assert loss < 0.5 * sentiment_runs["base"][1]


@pytest.mark.slow
def test_trained_prefix_folds_without_changing_the_loss(sentiment_runs):
    _, loss, model = sentiment_runs["prefix"]
    model.fold_reparameterization()
    assert sentiment_answer_loss(model) == pytest.approx(loss, abs=1e-6)
