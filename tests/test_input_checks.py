"""Bad input gets one clear error, and the fast BPE encoder gives the plain algorithm's ids.

Covers the tokenizer (encoding equals a reference BPE written here; bounded cache; decode of
ids that are not tokens), generation arguments, shipped checkpoints that are the wrong size
or hold bad numbers, and GPT-2 folders whose config.json asks for impossible sizes.
"""
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from helpers import tiny_gpt, tokens
from minipeft.corpus import generate_corpus
from minipeft.gpt2 import GPT2BPETokenizer, gpt2_config, load_gpt2
from minipeft.methods import PRESETS, get_peft_model
from minipeft.paths import CHECKPOINT_DIR, TASKS_DIR
from minipeft.pretrained import checkpoint_report, load_pretrained
from minipeft.tasks import load_examples
from minipeft.tokenizer import CACHE_SIZE, load_tokenizer, pre_split


# --------------------------------------------------------------------------------------
# Tokenizer: the encoder equals the textbook algorithm
# --------------------------------------------------------------------------------------
def reference_bpe(chunk: str, merges: list[tuple[int, int]]) -> list[int]:
    """Greedy BPE as usually written: find the adjacent pair learned earliest, replace all
    its occurrences left to right, repeat until no learned pair is left. O(n²), but plain."""
    rank = {pair: 256 + i for i, pair in enumerate(merges)}
    ids = list(chunk.encode("utf-8"))
    while True:
        ranked = [rank[p] for p in zip(ids, ids[1:]) if p in rank]
        if not ranked:
            return ids
        new_id = min(ranked)
        pair = merges[new_id - 256]
        merged, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                merged.append(new_id)
                i += 2
            else:
                merged.append(ids[i])
                i += 1
        ids = merged


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def reference_encode(tokenizer):
    memo: dict[str, list[int]] = {}

    def encode(text: str) -> list[int]:
        ids: list[int] = []
        for i, piece in enumerate(text.split("<|endoftext|>")):
            if i > 0:
                ids.append(tokenizer.eos_id)
            for chunk in pre_split(piece):
                if chunk not in memo:
                    memo[chunk] = reference_bpe(chunk, tokenizer.merges)
                ids += memo[chunk]
        return ids
    return encode


WIDE_ALPHABET = "abcdefghijklmnopqrstuvwxyz" * 4 + "     " + "0123456789.,:!?'" + "éß東😀\n\t"
NARROW_ALPHABET = "aab "  # long runs like "aaa" where the same pair overlaps itself


@pytest.mark.parametrize("alphabet", [WIDE_ALPHABET, NARROW_ALPHABET], ids=["wide", "narrow"])
@pytest.mark.parametrize("seed", range(10))
def test_encoder_equals_reference_bpe_on_random_strings(tokenizer, reference_encode, alphabet,
                                                       seed):
    """Wide: letters the merges know, digits, accents, emoji. Narrow: overlapping runs."""
    rng = random.Random(seed)
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))
    assert tokenizer.encode(text) == reference_encode(text)


@pytest.mark.parametrize("word", ["the", "happy", "ab", "a"])
def test_encoder_equals_reference_bpe_on_long_repetitive_chunks(tokenizer, word):
    """One chunk of a few thousand letters: overlapping occurrences of the same pair."""
    chunk = word * (3000 // len(word)) + "xyz"
    assert tokenizer.encode(chunk) == reference_bpe(chunk, tokenizer.merges)


def test_encoder_equals_reference_bpe_on_corpus_text(tokenizer, reference_encode):
    text = "<|endoftext|>".join(generate_corpus(300, seed=7))
    assert tokenizer.encode(text) == reference_encode(text)


def test_shipped_task_files_tokenize_as_the_reference(tokenizer, reference_encode):
    files = sorted(TASKS_DIR.glob("*.jsonl"))
    assert files, "no shipped task files"
    for path in files:
        task, split = path.name.split(".")[:2]
        for example in load_examples(task, split):
            for text in (example.prompt, example.answer):
                assert tokenizer.encode(text) == reference_encode(text), (path.name, text)


def test_the_chunk_cache_is_bounded(tokenizer):
    fresh = type(tokenizer)(tokenizer.merges)
    words = [f" w{i}x" for i in range(CACHE_SIZE + 500)]  # distinct short chunks
    fresh.encode("".join(words))
    assert fresh._encode_short_chunk.cache_info().currsize <= CACHE_SIZE
    long_chunk = "ab" * 5000
    before = fresh._encode_short_chunk.cache_info()
    fresh.encode(long_chunk)
    after = fresh._encode_short_chunk.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses), "long chunk was cached"


# --------------------------------------------------------------------------------------
# Tokenizer: decode of ids that are not tokens
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, 2048, 10**6])
def test_decode_of_an_id_out_of_range_names_it_and_the_range(tokenizer, bad):
    assert tokenizer.vocab_size == 2048
    with pytest.raises(ValueError, match=rf"token id {bad} .*0 to 2047"):
        tokenizer.decode([5, bad])


@pytest.mark.parametrize("bad", [2.0, "7", None, True])
def test_decode_of_a_non_integer_id_is_a_clear_error(tokenizer, bad):
    with pytest.raises(TypeError, match=rf"token id {bad!r} is not an integer.*\[0, 2048\)"):
        tokenizer.decode([5, bad])


def test_decode_accepts_an_integer_tensor(tokenizer):
    ids = tokenizer.encode("the cat ate")
    assert tokenizer.decode(torch.tensor(ids)) == "the cat ate"


# --------------------------------------------------------------------------------------
# Generation arguments
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), r"max_new_tokens=0: .*positive integer"),
    (dict(max_new_tokens=-3), r"max_new_tokens=-3: .*positive integer"),
    (dict(max_new_tokens=2.0), r"max_new_tokens=2.0: .*positive integer"),
    (dict(max_new_tokens="4"), r"max_new_tokens='4': .*positive integer"),
    (dict(top_k=0), r"top_k=0: .*positive integer.*or None"),
    (dict(top_k=-2), r"top_k=-2: .*positive integer.*or None"),
    (dict(temperature=-0.5), r"temperature=-0.5: .*finite number ≥ 0"),
    (dict(temperature=float("nan")), r"temperature=nan: .*finite number ≥ 0"),
    (dict(temperature=float("inf")), r"temperature=inf: .*finite number ≥ 0"),
])
def test_bad_generation_arguments_are_one_clear_error(kwargs, message):
    model = tiny_gpt()
    arguments = dict(max_new_tokens=4, temperature=1.0, top_k=None) | kwargs
    with pytest.raises(ValueError, match=message):
        model.generate(tokens()[:1], **arguments)


def test_an_empty_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match=r"prompt is empty.*eos_id"):
        tiny_gpt().generate(torch.zeros(1, 0, dtype=torch.long), 3)


def test_greedy_and_unrestricted_sampling_stay_valid():
    model, idx = tiny_gpt(), tokens()[:1]
    greedy = model.generate(idx, 3, temperature=0)
    logits = model(idx).logits[0, -1]
    assert greedy[0, idx.shape[1]] == logits.argmax()  # the first new token is the argmax
    sampled = model.generate(idx, 3, temperature=1.0, top_k=None,
                             generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (1, idx.shape[1] + 3)


def test_a_peft_model_checks_the_context_window_before_generating():
    """block_size 32: a 30-token prompt cannot get 5 more tokens, with or without an adapter."""
    model = get_peft_model(tiny_gpt(), PRESETS["lora"]())
    idx = torch.zeros(1, 30, dtype=torch.long)
    with pytest.raises(ValueError, match=r"prompt of 30 tokens \+ 5 new tokens exceeds the "
                                         r"context window block_size=32"):
        model.generate(idx, 5)


# --------------------------------------------------------------------------------------
# Shipped checkpoints
# --------------------------------------------------------------------------------------
def read_tiny() -> tuple[dict, dict]:
    with safe_open(str(CHECKPOINT_DIR / "tiny.safetensors"), framework="pt") as f:
        return f.metadata(), {key: f.get_tensor(key) for key in f.keys()}


def test_another_sizes_file_under_a_name_is_refused(tmp_path):
    shutil.copy(CHECKPOINT_DIR / "small.safetensors", tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError) as error:
        load_pretrained("tiny", directory=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "tiny.safetensors") in message
    assert "(2048, 128)" in message and "(2048, 64)" in message  # found, expected
    assert "python -m minipeft pretrain --size tiny" in message


def test_a_config_that_differs_from_the_recipe_is_refused(tmp_path):
    metadata, state = read_tiny()
    config = json.loads(metadata["config"])
    config["layer_norm_eps"] = 0.1  # same shapes, different model
    save_file(state, str(tmp_path / "tiny.safetensors"),
              metadata={**metadata, "config": json.dumps(config)})
    with pytest.raises(ValueError, match=r"tiny.safetensors was saved with config .*0\.1.*"
                                         r"pretrain --size tiny"):
        load_pretrained("tiny", directory=tmp_path)


@pytest.mark.parametrize("damage, message", [
    ("int64", r"ln_f.weight holds torch.int64 numbers"),
    ("nan", r"ln_f.weight holds NaN or infinite values"),
    ("inf", r"ln_f.weight holds NaN or infinite values"),
])
def test_non_float_or_non_finite_weights_are_refused(tmp_path, damage, message):
    metadata, state = read_tiny()
    if damage == "int64":
        state["ln_f.weight"] = state["ln_f.weight"].round().to(torch.int64)
    else:
        state["ln_f.weight"] = state["ln_f.weight"].clone()
        state["ln_f.weight"][3] = float(damage)
    save_file(state, str(tmp_path / "tiny.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match=message + r".*pretrain --size tiny"):
        load_pretrained("tiny", directory=tmp_path)


@pytest.mark.parametrize("content", [b"", b"not safetensors", b"\x10" + b"\x00" * 7 + b"\xff" * 16])
def test_a_file_that_does_not_parse_names_its_path_and_the_fix(tmp_path, content):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(content)
    for read in (load_pretrained, checkpoint_report):
        with pytest.raises(ValueError) as error:
            read("tiny", directory=tmp_path)
        assert str(path) in str(error.value)
        assert "python -m minipeft pretrain --size tiny" in str(error.value)


# --------------------------------------------------------------------------------------
# GPT-2 folders: sizes from config.json are checked before anything is allocated
# --------------------------------------------------------------------------------------
SMALL_GPT2 = dict(model_type="gpt2", vocab_size=96, n_positions=40, n_embd=24, n_layer=2,
                  n_head=3)


@pytest.mark.parametrize("key, value", [
    ("n_embd", 0), ("n_embd", -24), ("n_embd", 24.0), ("n_embd", "24"), ("n_embd", True),
    ("n_layer", 0), ("n_head", -1), ("vocab_size", 0), ("n_positions", 10**12),
    ("n_embd", 10**9), ("n_inner", 0), ("n_inner", 2.5),
])
def test_gpt2_sizes_must_be_whole_numbers_in_range(key, value):
    with pytest.raises(ValueError, match=rf"{key}={value!r} must be a whole number from 1 to"):
        gpt2_config({**SMALL_GPT2, key: value})


def test_gpt2_heads_must_divide_the_width():
    with pytest.raises(ValueError, match=r"n_embd=24 is not divisible by n_head=5"):
        gpt2_config({**SMALL_GPT2, "n_head": 5})


@pytest.mark.parametrize("key, value, message", [
    ("layer_norm_epsilon", -1e-5, "layer_norm_epsilon=-1e-05"),
    ("layer_norm_epsilon", "1e-5", "layer_norm_epsilon='1e-5'"),
    ("resid_pdrop", 1.5, "dropout probability 1.5"),
])
def test_gpt2_numbers_must_be_in_range(key, value, message):
    drop = {"resid_pdrop": value, "embd_pdrop": value, "attn_pdrop": value}
    setting = drop if key == "resid_pdrop" else {key: value}
    with pytest.raises(ValueError, match=message):
        gpt2_config({**SMALL_GPT2, **setting})


def gpt2_folder(tmp_path: Path, config) -> Path:
    """A folder with `config` and a one-tensor model.safetensors (a few hundred bytes)."""
    (tmp_path / "config.json").write_text(config if isinstance(config, str)
                                          else json.dumps(config))
    save_file({"wte.weight": torch.zeros(4, 4)}, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_a_config_larger_than_its_weights_file_is_refused_before_allocation(tmp_path):
    """Sizes within the limits, but 10⁶ × 96,000 embedding weights would need ~400 GB."""
    big = {**SMALL_GPT2, "vocab_size": 1_000_000, "n_embd": 96_000, "n_head": 3}
    with pytest.raises(ValueError, match=r"config.json describes a model of [\d,]+ weights, "
                                         r"but .*model.safetensors has only \d+ bytes"):
        load_gpt2(gpt2_folder(tmp_path, big))


def test_a_config_json_that_does_not_parse_names_its_path(tmp_path):
    folder = gpt2_folder(tmp_path, '{"model_type": "gpt2", ')
    with pytest.raises(ValueError, match=rf"{folder / 'config.json'} is not valid JSON"):
        load_gpt2(folder)


def test_a_config_json_that_is_not_an_object_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"config.json holds a JSON list"):
        load_gpt2(gpt2_folder(tmp_path, "[1, 2]"))


def gpt2_tokenizer_folder(tmp_path, vocab_text: str):
    (tmp_path / "vocab.json").write_text(vocab_text)
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    return tmp_path


def test_a_gpt2_vocab_that_does_not_parse_names_its_path(tmp_path):
    folder = gpt2_tokenizer_folder(tmp_path, '{"a": 0, ')
    with pytest.raises(ValueError, match=rf"{folder / 'vocab.json'} is not valid JSON"):
        GPT2BPETokenizer.from_directory(folder)


def test_gpt2_decode_of_an_unknown_id_names_it(tmp_path):
    folder = gpt2_tokenizer_folder(tmp_path, json.dumps({"a": 0, "b": 1, "ab": 2}))
    gpt2_tokenizer = GPT2BPETokenizer.from_directory(folder)
    assert gpt2_tokenizer.encode("abba") == [2, 1, 0]
    assert gpt2_tokenizer.decode([2, 1]) == "abb"
    with pytest.raises(ValueError, match=r"token id 3 is outside the vocabulary: valid ids "
                                         r"are 0 to 2"):
        gpt2_tokenizer.decode([2, 3])
    with pytest.raises(ValueError, match=r"token id -1 is outside"):
        gpt2_tokenizer.decode([-1])
