"""GPT-2 checkpoints and tokenizer files read by minipeft, checked against transformers.

The oracle is Hugging Face transformers itself: a small random GPT-2 is built and saved
locally (nothing is downloaded), loaded into minipeft's GPT, and both must give the same
logits. The tokenizer reader is compared with transformers' GPT2Tokenizer on files trained
by the independent `tokenizers` library.
"""
import json

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="the GPT-2 oracle tests need transformers (pip install -r "
                           "requirements-dev.txt)")
tokenizers = pytest.importorskip("tokenizers", reason="comes with transformers")

from safetensors.torch import load_file  # noqa: E402

from minipeft.gpt2 import GPT2BPETokenizer, gpt2_config, load_gpt2  # noqa: E402

GPT2_SHAPE = dict(vocab_size=96, n_positions=40, n_embd=24, n_layer=2, n_head=3,
                  bos_token_id=0, eos_token_id=0)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (biases and LayerNorms too), so no zero hides a wrong map."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


def make_gpt2(**overrides) -> "transformers.GPT2LMHeadModel":
    config = transformers.GPT2Config(**{**GPT2_SHAPE, **overrides})
    model = transformers.GPT2LMHeadModel(config)
    randomize(model, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def hf_model():
    return make_gpt2()


@pytest.fixture(scope="module")
def saved_gpt2(hf_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    hf_model.save_pretrained(directory)
    return directory


def tokens(n: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, GPT2_SHAPE["vocab_size"], (n, length), generator=generator)


# --------------------------------------------------------------------------------------
# Weights and logits
# --------------------------------------------------------------------------------------
def test_config_maps_every_field(saved_gpt2):
    config = load_gpt2(saved_gpt2).config
    assert (config.vocab_size, config.block_size, config.n_layer, config.n_head,
            config.d_model, config.d_ff) == (96, 40, 2, 3, 24, 96)
    assert config.dropout == pytest.approx(0.1) and config.layer_norm_eps == 1e-5


def test_split_qkv_is_the_transposed_conv1d(hf_model, saved_gpt2):
    """q, k, v are the three column blocks of c_attn's (d, 3d) Conv1D weight, transposed."""
    ours = load_gpt2(saved_gpt2)
    fused = hf_model.transformer.h[1].attn.c_attn.weight  # (d, 3d): y = x W + b
    d = GPT2_SHAPE["n_embd"]
    for part, name in enumerate("qkv"):
        linear = getattr(ours.blocks[1].attn, name)
        torch.testing.assert_close(linear.weight, fused[:, part * d:(part + 1) * d].T)
        x = torch.randn(5, d)
        qkv = hf_model.transformer.h[1].attn.c_attn(x)  # (5, 3d), transformers' own Conv1D
        torch.testing.assert_close(linear(x), qkv[:, part * d:(part + 1) * d])


def test_logits_equal_transformers(hf_model, saved_gpt2):
    ours = load_gpt2(saved_gpt2)
    idx = tokens()
    with torch.no_grad():
        expected = hf_model(idx).logits
        got = ours(idx).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_logits_equal_transformers_with_kv_cache(hf_model, saved_gpt2):
    """Prompt first, then two single tokens, each reusing the cached keys/values."""
    ours = load_gpt2(saved_gpt2)
    idx = tokens(length=10)
    cache = ours.new_cache()
    with torch.no_grad():
        hf_out = hf_model(idx[:, :8], use_cache=True)
        hf_steps = [hf_out.logits]
        ours_steps = [ours(idx[:, :8], cache=cache).logits]
        past = hf_out.past_key_values
        for t in (8, 9):
            hf_out = hf_model(idx[:, t:t + 1], past_key_values=past, use_cache=True)
            past = hf_out.past_key_values
            hf_steps.append(hf_out.logits)
            ours_steps.append(ours(idx[:, t:t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(ours_steps, 1), torch.cat(hf_steps, 1), atol=1e-4, rtol=0)


def test_pytorch_model_bin_with_untransformed_names(hf_model, tmp_path):
    """The older format: pytorch_model.bin, keys without 'transformer.', mask buffers."""
    state = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
    for i in range(GPT2_SHAPE["n_layer"]):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 40, 40))  # old causal mask
    torch.save(state, tmp_path / "pytorch_model.bin")
    hf_model.config.to_json_file(tmp_path / "config.json")
    ours = load_gpt2(tmp_path)
    idx = tokens(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).logits, hf_model(idx).logits, atol=1e-4, rtol=0)


def test_n_inner_and_fp16_weights(tmp_path):
    hf = make_gpt2(n_inner=40).half()
    hf.save_pretrained(tmp_path)
    assert load_file(str(tmp_path / "model.safetensors"))["transformer.wte.weight"].dtype == \
        torch.float16
    ours = load_gpt2(tmp_path)
    assert ours.config.d_ff == 40 and ours.tok_emb.weight.dtype == torch.float32
    idx = tokens(seed=4)
    with torch.no_grad():
        expected = hf.float()(idx).logits
        torch.testing.assert_close(ours(idx).logits, expected, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------
# Bad input: one clear error each
# --------------------------------------------------------------------------------------
def copy_folder(source, destination, skip=()):
    destination.mkdir(exist_ok=True)
    for path in source.iterdir():
        if path.name not in skip:
            (destination / path.name).write_bytes(path.read_bytes())
    return destination


def test_missing_config_or_weights(saved_gpt2, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_gpt2(copy_folder(saved_gpt2, tmp_path / "a", skip=("config.json",)))
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_gpt2(copy_folder(saved_gpt2, tmp_path / "b", skip=("model.safetensors",)))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_gpt2(tmp_path / "nowhere")


def test_other_architecture_is_refused(saved_gpt2, tmp_path):
    folder = copy_folder(saved_gpt2, tmp_path / "llama")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type='llama', not 'gpt2'"):
        load_gpt2(folder)


@pytest.mark.parametrize("setting, message", [
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn"),
    ({"add_cross_attention": True}, "cross-attention"),
    ({"tie_word_embeddings": False}, "tied"),
    ({"scale_attn_weights": False}, "1/√d_h"),
    ({"activation_function": "relu"}, "tanh approximation"),
    ({"attn_pdrop": 0.0}, "single dropout"),
])
def test_unrepresentable_config_is_refused(setting, message):
    with pytest.raises(ValueError, match=message):
        gpt2_config({"model_type": "gpt2", **setting})


def test_wrong_shapes_and_untied_head_are_refused(hf_model, saved_gpt2, tmp_path):
    folder = copy_folder(saved_gpt2, tmp_path / "shape")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_positions": 64}))
    with pytest.raises(ValueError, match=r"wpe.weight.*shape \(40, 24\).*\(64, 24\)"):
        load_gpt2(folder)
    state = dict(hf_model.state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0  # an untied head
    torch.save(state, tmp_path / "pytorch_model.bin")
    hf_model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(ValueError, match="not tied"):
        load_gpt2(tmp_path)


# --------------------------------------------------------------------------------------
# The BPE reader
# --------------------------------------------------------------------------------------
TOKENIZER_TEXTS = [
    "Hello world! It's 2024, we've got 3.14 apples and they'll do.",
    "naïve café, 東京 and x² + ½ = Ⅻ",
    "  spaces   and\ttabs\nnew lines\n\n",
    "emoji 😀👍 don't I'D 'quoted' text",
]


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    """vocab.json + merges.txt trained by the `tokenizers` library (GPT-2's byte-level BPE)."""
    folder = tmp_path_factory.mktemp("gpt2_tokenizer")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(TOKENIZER_TEXTS * 20, vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(folder))
    return folder


@pytest.mark.parametrize("text", [
    *TOKENIZER_TEXTS,
    "Zebra's 's 'S  x\x1cy\u00a0z  \u3000end ",  # contractions, odd whitespace
    "<|endoftext|>a b<|endoftext|>",
    "ÀÉÎ ǅ 𝔘𝔫𝔦 ٣٤ unseen-words 12345",
])
def test_bpe_reader_matches_transformers(tokenizer_folder, text):
    reference = transformers.GPT2Tokenizer.from_pretrained(str(tokenizer_folder))
    ours = GPT2BPETokenizer.from_directory(tokenizer_folder)
    ids = ours.encode(text)
    assert ids == reference.encode(text)
    assert ours.decode(ids) == text
    if text.isascii():  # other tokens may hold part of a character's UTF-8 bytes
        assert "".join(ours.token_text(i) for i in ids) == text


def test_bpe_reader_missing_or_broken_files(tokenizer_folder, tmp_path):
    (tmp_path / "vocab.json").write_bytes((tokenizer_folder / "vocab.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        GPT2BPETokenizer.from_directory(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nH e l\n")
    with pytest.raises(ValueError, match="merges.txt:2"):
        GPT2BPETokenizer.from_directory(tmp_path)
