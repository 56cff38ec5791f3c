"""Hugging Face GPT-2 in minipeft: its weights, its tokenizer, and peft's adapter files.

minipeft's GPT *is* GPT-2's architecture (pre-LayerNorm blocks, learned positions, tanh-GELU,
LM head tied to the token embedding), so a GPT-2 checkpoint loads into it exactly. Only the
storage differs:

* GPT-2 keeps q, k and v in one fused layer `attn.c_attn` with output 3d; minipeft has three
  separate d→d layers, so c_attn is cut into three equal parts along its output axis.
* GPT-2's layers are `Conv1D`, which computes y = x W + b with W stored as (d_in, d_out);
  nn.Linear computes y = x Wᵀ + b with W stored as (d_out, d_in). Every weight is therefore
  transposed on the way in: W_linear = W_conv1dᵀ.

Nothing is downloaded: `load_gpt2(directory)` reads a local folder
with `config.json` and `model.safetensors` (or `pytorch_model.bin`), and `GPT2BPETokenizer`
reads a local `vocab.json` + `merges.txt`.

The last section translates LoRA and DoRA adapters between minipeft and Hugging Face peft
for a GPT-2-loaded model: minipeft's o, fc, proj are GPT-2's attn.c_proj, mlp.c_fc,
mlp.c_proj, one to one, so an adapter on them can be written with peft's key names
(`save_peft_adapter(model, folder)`) and a peft adapter folder read back
(`load_peft_adapter(gpt, folder)`).

This module is the interop layer: it imports minipeft's core (model, tokenizer, methods) and
nothing in the core imports it (tests/test_structure.py checks that).
"""
from __future__ import annotations

import functools
import json
import pickle
import re
import sys
import unicodedata
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from minipeft.checks import is_finite_number, is_int
from minipeft.files import atomic_directory, safetensors_bytes
from minipeft.methods.base import (BLOCK_MODULES, CONFIG_NAME, WEIGHTS_NAME, check_save_target,
                                   get_peft_model, is_peft_config, read_adapter_config,
                                   saved_key)
from minipeft.methods.dora import DoraConfig
from minipeft.methods.lora import LoraConfig
from minipeft.model import GPT, GPTConfig
from minipeft.tokenizer import CACHE_SIZE, CACHED_CHUNK_LENGTH, apply_merges, check_token_id

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the first one present is read

# GPT2Config's defaults (transformers): a config.json may leave any of these out.
GPT2_DEFAULTS = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
    "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": 0.1, "embd_pdrop": 0.1,
    "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
    "add_cross_attention": False, "tie_word_embeddings": True,
}
# Activations that compute GELU's tanh approximation, 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³))),
# which is what minipeft's MLP uses (nn.GELU(approximate="tanh")).
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast")
# Sizes a config.json sets, with a generous upper bound each (GPT-2 XL, the largest GPT-2,
# has 50,257 / 1,024 / 1,600 / 48 / 25 / 6,400). They are checked before anything is allocated,
# so a mistyped or hostile config.json cannot ask for terabytes.
SIZE_LIMITS = {"vocab_size": 1_000_000, "n_positions": 100_000, "n_embd": 100_000,
               "n_layer": 1_000, "n_head": 1_000, "n_inner": 1_000_000}
# Settings minipeft's GPT has no counterpart for, with the value it supports and why.
UNSUPPORTED_FLAGS = {
    "scale_attn_weights": (True, "minipeft always scales attention scores by 1/√d_h"),
    "scale_attn_by_inverse_layer_idx": (False, "minipeft does not scale scores by 1/(layer+1)"),
    "reorder_and_upcast_attn": (False, "minipeft has no reordered/upcast attention variant"),
    "add_cross_attention": (False, "minipeft's GPT is decoder-only, without cross-attention"),
    "tie_word_embeddings": (True, "minipeft's LM head is always tied to the token embedding"),
}


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------
def gpt2_config(hf_config: dict, source: str | Path = CONFIG_FILE) -> GPTConfig:
    """The GPTConfig for a GPT-2 config.json dict; anything minipeft cannot represent → error.

    `source` (the file's path) only appears in the error messages.
    """
    if not isinstance(hf_config, dict):
        raise ValueError(f"{source} holds a JSON {type(hf_config).__name__}, not an object of "
                         "settings; is it a Hugging Face config.json?")
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise ValueError(f"config.json describes model_type={model_type!r}, not 'gpt2': "
                         "from_gpt2 loads GPT-2 checkpoints only (GPT2LMHeadModel)")
    c = {**GPT2_DEFAULTS, **hf_config}
    for key, (supported, why) in UNSUPPORTED_FLAGS.items():
        if c[key] != supported:
            raise ValueError(f"config.json sets {key}={c[key]!r}, which minipeft's GPT cannot "
                             f"represent ({why}); only {key}={supported!r} loads")
    if c["activation_function"] not in TANH_GELUS:
        raise ValueError(f"activation_function={c['activation_function']!r}: minipeft's MLP uses "
                         f"GELU's tanh approximation, i.e. one of {list(TANH_GELUS)}")
    dropouts = {c["resid_pdrop"], c["embd_pdrop"], c["attn_pdrop"]}
    if len(dropouts) != 1:
        raise ValueError(f"resid_pdrop, embd_pdrop and attn_pdrop differ ({sorted(dropouts)}); "
                         "minipeft's GPT has a single dropout probability for all three")
    check_gpt2_sizes(c, source)
    dropout, epsilon = dropouts.pop(), c["layer_norm_epsilon"]
    if not is_finite_number(dropout) or not 0 <= dropout < 1:
        raise ValueError(f"{source}: dropout probability {dropout!r} must be a number in [0, 1)")
    if not is_finite_number(epsilon) or not 0 < epsilon < 1:
        raise ValueError(f"{source}: layer_norm_epsilon={epsilon!r} must be a number in (0, 1)")
    return GPTConfig(vocab_size=c["vocab_size"], block_size=c["n_positions"],
                     n_layer=c["n_layer"], n_head=c["n_head"], d_model=c["n_embd"],
                     d_ff=c["n_inner"], dropout=float(dropout), layer_norm_eps=float(epsilon))


def check_gpt2_sizes(c: dict, source: str | Path) -> None:
    """Every size is a whole number within SIZE_LIMITS, and the heads split n_embd evenly."""
    for key, limit in SIZE_LIMITS.items():
        value = c[key]
        if key == "n_inner" and value is None:
            continue  # None means 4·n_embd, as in GPT2Config
        if not is_int(value) or not 1 <= value <= limit:
            raise ValueError(f"{source}: {key}={value!r} must be a whole number from 1 to "
                             f"{limit:,}")
    if c["n_embd"] % c["n_head"] != 0:
        raise ValueError(f"{source}: n_embd={c['n_embd']} is not divisible by "
                         f"n_head={c['n_head']}; each head gets n_embd / n_head dimensions")


def parameter_count(config: GPTConfig) -> int:
    """Number of weights a GPT-2 of this config stores (tied head counted once)."""
    d, f, layers = config.d_model, config.d_ff, config.n_layer
    per_block = (4 * d  # ln_1, ln_2: weight and bias each
                 + 3 * d * d + 3 * d  # c_attn
                 + d * d + d  # attn.c_proj
                 + d * f + f + f * d + d)  # mlp.c_fc, mlp.c_proj
    return (config.vocab_size + config.block_size) * d + layers * per_block + 2 * d


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------
# Old GPT-2 checkpoints store the causal mask as buffers; minipeft builds its own mask.
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")


def read_gpt2_files(directory: str | Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """(config, state dict) from a GPT-2 folder, with one clear error per missing piece.

    The config is read and checked first, and must fit in the weights file, so no size taken
    from config.json reaches an allocation unchecked.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory; give the folder that holds a "
                                f"GPT-2 checkpoint's {CONFIG_FILE} and {WEIGHT_FILES[0]}")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing; a GPT-2 folder needs {CONFIG_FILE} "
                                f"next to its weights (save_pretrained writes both)")
    weights = [directory / name for name in WEIGHT_FILES if (directory / name).is_file()]
    if not weights:
        raise FileNotFoundError(f"{directory} has {CONFIG_FILE} but no weights: expected one "
                                f"of {list(WEIGHT_FILES)}")
    config = gpt2_config(read_json(config_path, "a GPT-2 config.json"), config_path)
    # Every weight takes at least one byte on disk, so a config that implies more weights than
    # the file has bytes does not describe it.
    needed, size = parameter_count(config), weights[0].stat().st_size
    if needed > size:
        raise ValueError(f"{config_path} describes a model of {needed:,} weights, but "
                         f"{weights[0]} has only {size:,} bytes: the config does not belong to "
                         "these weights")
    try:
        if weights[0].suffix == ".safetensors":
            state = load_file(str(weights[0]))
        else:
            state = torch.load(weights[0], map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError, OSError) as err:
        raise ValueError(f"{weights[0]} cannot be read as GPT-2 weights ({err}); re-save the "
                         "checkpoint with transformers' save_pretrained") from None
    # GPT2LMHeadModel prefixes its body with "transformer."; a bare GPT2Model does not.
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    return config, state


def read_json(path: Path, what: str):
    """The JSON in `path`, or one error naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError included
        raise ValueError(f"{path} is not valid JSON ({err}); it should be {what}") from None


def convert_gpt2_state_dict(state: dict[str, torch.Tensor],
                            config: GPTConfig) -> dict[str, torch.Tensor]:
    """GPT-2's tensors renamed (and transposed, split) into minipeft's state dict, as fp32.

    c_attn: W (d, 3d), b (3d,)  →  q, k, v: Wᵀ cut in three (d, d) row blocks, b in three (d,).
    Every other Conv1D weight (d_in, d_out) becomes a Linear weight (d_out, d_in) = Wᵀ.
    """
    state = {k: v for k, v in state.items() if not k.endswith(MASK_BUFFERS)}
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise ValueError(f"GPT-2 tensor {key!r} holds {tensor.dtype} numbers, not "
                             "floating-point weights")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"GPT-2 tensor {key!r} holds NaN or infinite values")
    state = {k: v.float() for k, v in state.items()}
    d = config.d_model
    out = {}

    def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key not in state:
            raise ValueError(f"the GPT-2 checkpoint has no tensor {key!r}; is it complete and "
                             f"does config.json match it?")
        tensor = state.pop(key)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"GPT-2 tensor {key!r} has shape {tuple(tensor.shape)}, but "
                             f"config.json implies {shape}")
        return tensor

    out["tok_emb.weight"] = take("wte.weight", (config.vocab_size, d))  # E: (V, d)
    out["pos_emb.weight"] = take("wpe.weight", (config.block_size, d))  # P: (block_size, d)
    for i in range(config.n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        for ln_hf, ln_ours in (("ln_1", "ln1"), ("ln_2", "ln2")):
            out[b + ln_ours + ".weight"] = take(h + ln_hf + ".weight", (d,))
            out[b + ln_ours + ".bias"] = take(h + ln_hf + ".bias", (d,))
        qkv_weight = take(h + "attn.c_attn.weight", (d, 3 * d)).t()  # (3d, d): rows q | k | v
        qkv_bias = take(h + "attn.c_attn.bias", (3 * d,))
        for part, name in enumerate(("q", "k", "v")):
            rows = slice(part * d, (part + 1) * d)
            out[b + f"attn.{name}.weight"] = qkv_weight[rows].contiguous()  # (d, d)
            out[b + f"attn.{name}.bias"] = qkv_bias[rows].contiguous()  # (d,)
        for hf_name, ours, (d_in, d_out) in (("attn.c_proj", "attn.o", (d, d)),
                                             ("mlp.c_fc", "mlp.fc", (d, config.d_ff)),
                                             ("mlp.c_proj", "mlp.proj", (config.d_ff, d))):
            weight = take(h + hf_name + ".weight", (d_in, d_out))  # Conv1D: (d_in, d_out)
            out[b + ours + ".weight"] = weight.t().contiguous()  # Linear: (d_out, d_in)
            out[b + ours + ".bias"] = take(h + hf_name + ".bias", (d_out,))
    out["ln_f.weight"] = take("ln_f.weight", (d,))
    out["ln_f.bias"] = take("ln_f.bias", (d,))
    head = state.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head, out["tok_emb.weight"]):
        raise ValueError("lm_head.weight differs from wte.weight: the checkpoint's LM head is "
                         "not tied to its embedding, and minipeft's GPT always ties them")
    out["head.weight"] = out["tok_emb.weight"]  # tied: one tensor, two names
    if state:
        raise ValueError(f"the GPT-2 checkpoint has tensors minipeft does not know: "
                         f"{sorted(state)[:5]}; is it a GPT2LMHeadModel (without extra heads)?")
    return out


def load_gpt2(directory: str | Path) -> GPT:
    """A minipeft GPT holding the GPT-2 checkpoint saved in `directory` (fp32, eval mode)."""
    config, state = read_gpt2_files(directory)
    model = GPT(config)
    model.load_state_dict(convert_gpt2_state_dict(state, config))
    return model.eval()


# --------------------------------------------------------------------------------------
# GPT-2's byte-level BPE tokenizer (vocab.json + merges.txt)
# --------------------------------------------------------------------------------------
END_OF_TEXT = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 bytes to 256 printable characters (its vocab.json alphabet).

    Printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 (space,
    control bytes, ...) are given the characters 256, 257, ... in byte order. So " the"
    appears in vocab.json as "Ġthe" (Ġ = chr(256 + 32)).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


# Unicode whitespace as GPT-2's pattern means it (the White_Space property). Python's \s also
# matches the separators \x1c-\x1f, so the class is spelled out.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


@functools.cache
def gpt2_pattern() -> re.Pattern:
    """GPT-2's pre-tokenizer, the regular expression

        's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

    Python's `re` has no \\p{L} (letters) or \\p{N} (numbers), so both classes are built once
    from the Unicode database (about half a second).
    """
    letters, numbers = [], []
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        if category[0] == "L":
            letters.append(code)
        elif category[0] == "N":
            numbers.append(code)
    L, N, S = char_class(letters), char_class(numbers), WHITESPACE
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+"
                      rf"|[{S}]+(?![^{S}])|[{S}]+")


def char_class(codes: list[int]) -> str:
    """The inside of a regex character class matching exactly `codes` (sorted), as ranges."""
    parts, start = [], codes[0]
    for prev, code in zip(codes, codes[1:] + [-1]):
        if code != prev + 1:
            parts.append(re.escape(chr(start)) if start == prev
                         else f"{re.escape(chr(start))}-{re.escape(chr(prev))}")
            start = code
    return "".join(parts)


class GPT2BPETokenizer:
    """GPT-2's tokenizer read from its `vocab.json` (token → id) and `merges.txt` (ranked pairs).

    encode: split text into chunks with GPT-2's pattern, write each chunk's UTF-8 bytes in the
    printable alphabet of `bytes_to_unicode`, then repeatedly merge the adjacent pair with the
    best (lowest) rank in merges.txt until no listed pair is left; look the pieces up in the
    vocabulary. decode reverses the alphabet map. `<|endoftext|>` is cut out first (eos_id).
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        self.vocab = vocab
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.id_limit = max(vocab.values(), default=-1) + 1  # ids are < this
        self.rank = {pair: r for r, pair in enumerate(merges)}  # earlier line = merged first
        self.byte_char = bytes_to_unicode()
        self.char_byte = {c: b for b, c in self.byte_char.items()}
        self.eos_id = vocab.get(END_OF_TEXT)
        self._encode_short_chunk = functools.lru_cache(maxsize=CACHE_SIZE)(self._merge_chunk)

    @classmethod
    def from_directory(cls, directory: str | Path) -> GPT2BPETokenizer:
        directory = Path(directory)
        files = {name: directory / name for name in ("vocab.json", "merges.txt")}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"GPT-2 tokenizer file(s) missing: {missing}; a GPT-2 "
                                    "tokenizer folder holds vocab.json and merges.txt")
        vocab = read_json(files["vocab.json"], "GPT-2's vocab.json (token → id)")
        if not isinstance(vocab, dict) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in vocab.values()):
            raise ValueError(f"{files['vocab.json']} must map each token to a whole number ≥ 0")
        merges = []
        for number, line in enumerate(files["merges.txt"].read_text(encoding="utf-8")
                                      .splitlines(), start=1):
            if line.startswith("#version") or not line.strip():
                continue
            pair = line.split(" ")
            if len(pair) != 2:
                raise ValueError(f"{files['merges.txt']}:{number}: expected two tokens "
                                 f"separated by one space, got {line!r}")
            merges.append(tuple(pair))
        return cls(vocab, merges)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return self.vocab_size

    def _merge_chunk(self, chunk: str) -> tuple[int, ...]:
        pieces = apply_merges([self.byte_char[b] for b in chunk.encode("utf-8")], self.rank,
                              join=str.__add__)
        missing = [p for p in pieces if p not in self.vocab]
        if missing:
            raise ValueError(f"tokens {missing[:3]} are produced by merges.txt but absent "
                             "from vocab.json: the two files do not belong together")
        return tuple(self.vocab[p] for p in pieces)

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        if len(chunk) <= CACHED_CHUNK_LENGTH:
            return self._encode_short_chunk(chunk)
        return self._merge_chunk(chunk)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, piece in enumerate(text.split(END_OF_TEXT)):
            if i > 0:
                if self.eos_id is None:
                    raise ValueError(f"the text contains {END_OF_TEXT} but vocab.json has no "
                                     "such token")
                ids.append(self.eos_id)
            for chunk in gpt2_pattern().findall(piece):
                ids.extend(self._encode_chunk(chunk))
        return ids

    def token(self, token_id: int) -> str:
        """The vocab.json entry of `token_id`, or one error naming the bad id."""
        token = self.id_to_token.get(check_token_id(token_id, self.id_limit))
        if token is None:
            raise ValueError(f"token id {token_id} is not in vocab.json (its ids have gaps)")
        return token

    def token_text(self, token_id: int) -> str:
        token = self.token(token_id)
        if token == END_OF_TEXT:
            return token
        return bytes(self.char_byte[c] for c in token).decode("utf-8", errors="replace")

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; a byte sequence that is not valid UTF-8 shows up as '�'."""
        out = bytearray()
        for i in ids:
            token = self.token(i)
            out += (token.encode("utf-8") if token == END_OF_TEXT
                    else bytes(self.char_byte[c] for c in token))
        return out.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------
# LoRA and DoRA adapters in Hugging Face peft's format
# --------------------------------------------------------------------------------------
# minipeft target → the GPT-2 module it equals. q, k, v have no counterpart: GPT-2 computes
# them with one fused c_attn, whose LoRA would be a single rank-r update of all three.
PEFT_MODULES = {"o": "attn.c_proj", "fc": "mlp.c_fc", "proj": "mlp.c_proj"}
PEFT_PREFIX = "base_model.model.transformer.h."
PEFT_KEY = re.compile(r"base_model\.model\.transformer\.h\.(\d+)\.(.+)\."
                      r"(lora_[AB]\.weight|lora_magnitude_vector)")
OURS_KEY = re.compile(r"base_model\.blocks\.(\d+)\.(?:attn|mlp)\.(\w+)\."
                      r"(lora_[AB]|lora_magnitude)")
# minipeft tensor suffix ↔ peft tensor suffix. Shapes agree: peft's lora_A is an
# nn.Linear(d_in, r) even around a Conv1D, so both store A as (r, d_in) and B as (d_out, r);
# DoRA's magnitude m is one number per output feature in both, (d_out,).
PEFT_TENSORS = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight",
                "lora_magnitude": "lora_magnitude_vector"}
# peft LoraConfig fields that must keep these values for minipeft's LoRA to be the same model.
PEFT_NEUTRAL = {"bias": "none", "modules_to_save": None, "rank_pattern": None,
                "alpha_pattern": None, "lora_bias": False, "layer_replication": None,
                "trainable_token_indices": None, "target_parameters": None}


def to_peft_state_dict(model) -> dict[str, torch.Tensor]:
    """The active LoRA adapter's tensors under the names peft gives them on GPT2LMHeadModel."""
    out = {}
    for key, tensor in model.adapter_state_dict().items():
        match = OURS_KEY.fullmatch(key)  # "base_model.blocks.3.attn.o.lora_A" → 3, o, lora_A
        if match is None or match.group(2) not in PEFT_MODULES:
            raise ValueError(f"{key}: peft's GPT-2 has no module that equals this one; only "
                             f"LoRA on {list(PEFT_MODULES)} maps one to one (GPT-2 fuses q, k, "
                             "v into c_attn, and its head is the tied embedding)")
        layer, target, suffix = match.groups()
        out[f"{PEFT_PREFIX}{layer}.{PEFT_MODULES[target]}.{PEFT_TENSORS[suffix]}"] = \
            tensor.contiguous().cpu()
    return out


def save_peft_adapter(model, directory: str | Path) -> Path:
    """Write a minipeft LoRA/DoRA model as a peft adapter folder (peft's from_pretrained reads it).

    The base must be the GPT-2 checkpoint the peft side loads; minipeft cannot check that here.
    minipeft's own format is written by `model.save_pretrained(directory)`.
    """
    config = model.config
    if type(config) not in (LoraConfig, DoraConfig):
        raise ValueError(f"only LoRA and DoRA adapters are written in peft's format, not "
                         f"{type(config).__name__}")
    use_dora = type(config) is DoraConfig
    if use_dora and not config.detach_norm:
        raise ValueError("peft's DoRA always treats ‖W₀ + ΔW‖ as a constant in backward; "
                         "only detach_norm=True has a peft equivalent")
    tensors = to_peft_state_dict(model)
    # Same field, same meaning; minipeft's own top_layers=N is peft's list of the top N.
    layers = config.layers_to_transform
    if config.top_layers is not None:
        n_layer = model.model_config.n_layer
        layers = list(range(n_layer - config.top_layers, n_layer))
    meta = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
        "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
        "use_rslora": config.use_rslora, "use_dora": use_dora, "bias": "none",
        "fan_in_fan_out": True,  # GPT-2's layers are Conv1D (weights stored as d_in × d_out)
        "target_modules": [PEFT_MODULES[t] for t in config.target_modules],
        "layers_to_transform": layers,
        "layers_pattern": None if layers is None else "h",
        "inference_mode": True,
    }
    directory = Path(directory)
    check_save_target(directory, "LORA")
    weights = safetensors_bytes(tensors, metadata={"format": "pt"})
    with atomic_directory(directory) as tmp:  # the folder appears whole, or not at all
        (tmp / WEIGHTS_NAME).write_bytes(weights)
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return directory


def load_peft_adapter(base_model: GPT, directory: str | Path):
    """A minipeft LoraModel (DoraModel if use_dora) holding the peft adapter in `directory`."""
    directory = Path(directory)
    meta = read_adapter_config(directory)
    if not is_peft_config(meta):
        raise ValueError(f"{directory} holds a minipeft adapter, not a Hugging Face peft one; "
                         "load it with PeftModel.from_pretrained(base_model, directory)")
    if meta.get("peft_type") != "LORA":
        raise ValueError(f"{directory} holds a peft {meta.get('peft_type')} adapter; minipeft "
                         "reads peft's LoRA adapters only")
    for key, neutral in PEFT_NEUTRAL.items():
        if (meta.get(key) or None) != (neutral or None):
            raise ValueError(f"{directory}: peft setting {key}={meta[key]!r} has no minipeft "
                             f"counterpart; only {key}={neutral!r} can be loaded")
    tensors, where = {}, set()
    for key, tensor in load_file(str(directory / WEIGHTS_NAME)).items():
        match = PEFT_KEY.fullmatch(key)
        hf_module = match and match.group(2)
        if hf_module not in PEFT_MODULES.values():
            raise ValueError(f"{directory}: tensor {key!r} adapts a GPT-2 module minipeft "
                             f"cannot map; only {sorted(PEFT_MODULES.values())} map one to one "
                             "(c_attn fuses q, k, v into one rank-r update)")
        layer = int(match.group(1))
        target = {hf: ours for ours, hf in PEFT_MODULES.items()}[hf_module]
        suffix = {hf: ours for ours, hf in PEFT_TENSORS.items()}[match.group(3)]
        where.add((layer, target))
        tensors[saved_key(f"blocks.{layer}.{BLOCK_MODULES[target]}", suffix)] = tensor
    layers = sorted({layer for layer, _ in where})
    targets = [t for t in PEFT_MODULES if any(t == m for _, m in where)]  # o, fc, proj order
    if where != {(layer, t) for layer in layers for t in targets}:
        raise ValueError(f"{directory}: the adapter does not put the same modules in every "
                         "adapted block, which a minipeft LoraConfig cannot express")
    config_class = DoraConfig if meta.get("use_dora") else LoraConfig
    config = config_class(r=int(meta["r"]), alpha=float(meta["lora_alpha"]),
                        dropout=float(meta.get("lora_dropout", 0.0)),
                        use_rslora=bool(meta.get("use_rslora", False)), target_modules=targets,
                        layers_to_transform=None if len(layers) == base_model.config.n_layer
                        else layers)
    model = get_peft_model(base_model, config)
    model.load_adapter_state_dict(tensors)
    return model
