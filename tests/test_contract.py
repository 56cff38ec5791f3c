"""The contract every PEFT preset keeps, checked on a tiny random GPT.

Parametrised over `minipeft.methods.PRESETS`, so a new preset is checked as soon as it is
registered (and fails `test_trainable_count_matches_hand_formula` until its formula is
written below). Each test id names the preset. The promises:

1. at initialisation the model computes what the base computes (or, for the input
   methods, what they promise instead);
2. one optimizer step changes φ only: every base tensor keeps its bits and gets no grad;
3. `disable_adapter()` gives the base's logits exactly;
4. save_pretrained → from_pretrained into a fresh base gives the same logits, bit for bit;
5. merge_and_unload() gives a plain GPT with the same logits, or raises CannotMergeError;
6. the trainable count equals the paper's formula, computed here from the model's shapes.
"""
import copy
import dataclasses
import functools
import math

import pytest
import torch

from minipeft.methods import PRESETS, PeftModel, TunerLayer, get_peft_model
from minipeft.methods.base import CannotMergeError
from minipeft.model import GPT, GPTConfig
from minipeft.tokenizer import load_tokenizer
from minipeft.train import make_optimizer

# The shipped tokenizer's vocabulary, so that the FISH mask can estimate its Fisher
# information on the sentiment task's training prompts, as the "fish" preset asks.
VOCAB = load_tokenizer().vocab_size
# Wide enough for every preset's default bottleneck (d/16 ≥ 1) and QLoRA's 64-entry blocks;
# 64 positions hold a 10-vector soft prompt and the sentiment prompts.
CONFIG = GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=2, d_model=32)
L, d, d_ff = CONFIG.n_layer, CONFIG.d_model, CONFIG.d_ff
# (d_in, d_out) of each block Linear, from the model's definition (Attention and MLP).
LINEAR_SHAPES = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d),
                 "fc": (d, d_ff), "proj": (d_ff, d)}

# The input methods change the model's input on purpose, so at initialisation they do not
# compute what the base computes; their promise is checked in test_input_methods_start_*.
INPUT_METHODS = {"prompt", "prefix", "deep_prompt"}
# DoRA computes W₀ as m₀ · W₀/‖W₀‖_c with m₀ = ‖W₀‖_c (Liu et al., 2024, Eq. 5): the base
# up to floating-point rounding, not bit for bit.
EQUAL_UP_TO_ROUNDING_AT_INIT = {"dora"}
# Adapters keep a non-linearity between W_down and W_up, and the input methods add an
# input rather than a weight: neither can be folded into the weights.
CANNOT_MERGE = {"houlsby", "pfeiffer", "parallel", "io_adapter", "prompt", "prefix",
                "deep_prompt"}
# Every preset runs as it is, except one setting that only buys speed: the FISH mask's
# Fisher estimate averages 8 sentiment examples here instead of 64 (same selector, task and
# budget; 64 backward passes per model build would dominate this file's run time).
TINY_SETTINGS = {"fish": {"n_samples": 8}}
PRESET_NAMES = sorted(PRESETS)
TOKENS = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model gains nothing from threads, and on a busy machine every operation
    would wait for the other thread (a 100× slowdown seen on 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fresh_base() -> GPT:
    """The same random base every call (seed 0)."""
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


def preset_config(preset: str):
    return dataclasses.replace(PRESETS[preset](), **TINY_SETTINGS.get(preset, {}))


@functools.cache
def wrapped_at_init(preset: str) -> PeftModel:
    torch.manual_seed(1)  # the method's own random init (A, prompts, masks)
    return get_peft_model(fresh_base(), preset_config(preset)).eval()


def wrap(preset: str) -> PeftModel:
    """A fresh copy of the preset's model at initialisation (built once per preset)."""
    return copy.deepcopy(wrapped_at_init(preset))


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model(TOKENS).logits


@torch.no_grad()
def base_logits(peft: PeftModel) -> torch.Tensor:
    """Logits of the base this PEFT model is built on, computed by a plain GPT.

    QLoRA's base is the NF4-quantised model: the plain GPT gets the dequantised weights Ŵ₀
    of each 4-bit layer (the quantisation itself is tested in test_qlora.py).
    """
    reference = fresh_base()
    for name, module in peft.base_model.named_modules():
        if hasattr(module, "dequantize"):
            owner = name.removesuffix(".base_layer")
            reference.get_submodule(owner).weight.copy_(module.dequantize())
    return logits(reference)


@torch.no_grad()
def perturb(peft: PeftModel, seed: int = 2) -> None:
    """Give φ random values, through the adapter's own loading route, so that φ matters.

    A mask that is still empty (ID3 fills it during training) gets random distinct entries.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in peft.adapter_state_dict().items():
        if name == "mask_indices" and bool((t < 0).any()):
            t = torch.randperm(peft.pool_size, generator=generator)[: len(t)]
        elif t.dtype.is_floating_point:
            t = t + 0.3 * torch.randn(t.shape, generator=generator)
        state[name] = t.clone()
    peft.load_adapter_state_dict(state)


def base_tensors(peft: PeftModel) -> dict[str, torch.Tensor]:
    """Every saved tensor of the model that is neither trainable nor part of φ."""
    phi = {t.data_ptr() for t in peft.adapter_state_dict().values()}
    return {name: t for name, t in peft.state_dict(keep_vars=True).items()
            if not t.requires_grad and t.data_ptr() not in phi}


# --------------------------------------------------------------------------------------
# 1. Initialisation
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_starts_at_the_base(preset):
    if preset in INPUT_METHODS:
        pytest.skip("an input method starts from a learned input; see test_input_methods_*")
    peft = wrap(preset)
    if preset in EQUAL_UP_TO_ROUNDING_AT_INIT:
        torch.testing.assert_close(logits(peft), base_logits(peft), rtol=0, atol=1e-6)
    else:  # φ adds an exact zero (B = 0, λ = 0, Δ = 0, W_up = 0) or scales by exactly 1
        assert torch.equal(logits(peft), base_logits(peft))


def test_input_methods_start_from_real_token_embeddings():
    """Soft prompt, init="vocab" (Lester et al., 2021): each of the k rows of P (k, d) is the
    embedding of a vocabulary token."""
    peft = wrap("prompt")
    k = PRESETS["prompt"]().num_virtual_tokens
    embedding = fresh_base().tok_emb.weight
    assert peft.prompt.shape == (k, d)
    for row in peft.prompt:
        assert (embedding == row).all(dim=1).any()


def test_input_methods_start_from_real_token_states():
    """Deep prompts start as the hidden states of a random token sequence: layer 0 holds
    E[ids] + pos[0..P-1] and layer 1 what block 0 makes of them."""
    peft = wrap("deep_prompt")
    n_prompt = PRESETS["deep_prompt"]().num_virtual_tokens
    base = fresh_base()
    prompts = peft.deep_prompts.detach()
    assert prompts.shape == (L, n_prompt, d)
    tokens_part = prompts[0] - base.pos_emb.weight[:n_prompt]
    gap = (tokens_part[:, None, :] - base.tok_emb.weight[None]).abs().amax(dim=2)  # (P, V)
    assert gap.min(dim=1).values.max() < 1e-6  # every row is a token embedding + position
    with torch.no_grad():
        torch.testing.assert_close(base.blocks[0](prompts[0][None])[0], prompts[1])


def test_input_methods_prefix_has_one_key_and_value_per_head_and_layer():
    """Prefix tuning through the MLP: P keys and values of shape (B, h, P, d_h) per layer."""
    peft = wrap("prefix")
    n_prefix = PRESETS["prefix"]().num_virtual_tokens
    pairs = peft.layer_prefixes(batch=3)
    assert len(pairs) == L
    for keys, values in pairs:
        for t in (keys, values):
            assert t.shape == (3, CONFIG.n_head, n_prefix, d // CONFIG.n_head)


# --------------------------------------------------------------------------------------
# 2. One optimizer step moves φ only
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_one_step_changes_only_phi(preset):
    peft = wrap(preset)
    frozen_before = {n: t.detach().clone() for n, t in base_tensors(peft).items()}
    phi_before = {n: t.clone() for n, t in peft.adapter_state_dict().items()}
    optimizer = make_optimizer(peft, lr=1e-2, weight_decay=0.1)
    peft.train()
    targets = TOKENS.roll(-1, dims=1)
    loss = peft(TOKENS, targets).loss
    if hasattr(peft, "regularization_loss"):
        loss = loss + peft.regularization_loss()
    loss.backward()
    optimizer.step()
    if hasattr(peft, "after_optimizer_step"):
        peft.after_optimizer_step(0, 10)  # AdaLoRA's scores, ID3's first unmasking
    frozen_after = base_tensors(peft)
    assert frozen_after.keys() == frozen_before.keys()
    for name, before in frozen_before.items():
        assert torch.equal(frozen_after[name], before), f"base tensor {name} changed"
        assert getattr(frozen_after[name], "grad", None) is None, f"{name} got a gradient"
    phi_after = peft.adapter_state_dict()
    assert any(not torch.equal(phi_after[n], t) for n, t in phi_before.items())


# --------------------------------------------------------------------------------------
# 3. disable_adapter
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_disable_adapter_gives_the_base(preset):
    peft = wrap(preset)
    perturb(peft)
    expected = base_logits(peft)
    assert not torch.allclose(logits(peft), expected, atol=1e-4)  # φ matters now
    with peft.disable_adapter():
        assert torch.equal(logits(peft), expected)
    assert not torch.allclose(logits(peft), expected, atol=1e-4)  # and is back after


# --------------------------------------------------------------------------------------
# 4. Saving and loading
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_save_and_load_reproduce_the_logits(preset, tmp_path):
    peft = wrap(preset)
    perturb(peft)
    peft.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(123)  # a loaded adapter must not depend on the RNG's state
    loaded = PeftModel.from_pretrained(fresh_base(), tmp_path / "adapter").eval()
    assert type(loaded) is type(peft) and loaded.config == peft.config
    saved, restored = peft.adapter_state_dict(), loaded.adapter_state_dict()
    assert saved.keys() == restored.keys()
    for name, tensor in saved.items():  # also φ that the logits do not show (MonteCLoRA's Λ)
        assert torch.equal(restored[name], tensor), name
    assert torch.equal(logits(loaded), logits(peft))


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_saved_names_are_the_models_own(preset):
    """Every saved tensor is named as in the model's state_dict (one convention for all
    methods, as in peft); a LoRA-family adapter's own name ('.default') is left out."""
    peft = wrap(preset)
    own = peft.state_dict(keep_vars=True)
    for name, tensor in peft.adapter_state_dict().items():
        stored = own.get(name, own.get(f"{name}.{peft.active_adapter}"))
        assert stored is not None, f"{name} is not a state_dict name of {type(peft).__name__}"
        assert stored.data_ptr() == tensor.data_ptr(), name


# --------------------------------------------------------------------------------------
# 5. Merging
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_merge_and_unload(preset):
    peft = wrap(preset)
    perturb(peft)
    before = logits(peft)
    if preset in CANNOT_MERGE:
        with pytest.raises(CannotMergeError):
            peft.merge_and_unload()
        assert torch.equal(logits(peft), before)  # the refusal changed nothing
        return
    merged = peft.merge_and_unload()
    assert type(merged) is GPT
    assert not any(isinstance(m, TunerLayer) for m in merged.modules())
    assert all(type(m) in (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)
               or not list(m.parameters(recurse=False)) for m in merged.modules())
    torch.testing.assert_close(logits(merged), before, rtol=0, atol=1e-5)


# QLoRA merges only on the way out: merge_and_unload() returns an fp32 model, while an
# in-place merge into the 4-bit weight is refused (it would re-quantise ΔW away).
MERGES_IN_PLACE = [p for p in PRESET_NAMES if p not in CANNOT_MERGE | {"qlora"}]


@pytest.mark.parametrize("preset", MERGES_IN_PLACE)
def test_merged_is_one_read_only_property_that_follows_merge_and_unmerge(preset):
    peft = wrap(preset)
    perturb(peft)
    before = logits(peft)
    assert peft.merged is False
    peft.merge()
    assert peft.merged is True
    torch.testing.assert_close(logits(peft), before, rtol=0, atol=1e-5)  # W₀ + ΔW acts alone
    peft.unmerge()
    assert peft.merged is False
    with pytest.raises(AttributeError):
        peft.merged = True  # only merge() and unmerge() change it


# --------------------------------------------------------------------------------------
# 6. Trainable parameter counts, from each paper's formula
# --------------------------------------------------------------------------------------
def lora_count(r: int, targets: list[str], extra_per_matrix: int = 0) -> int:
    """LoRA (Hu et al., 2021): A (r × d_in) and B (d_out × r) per targeted matrix."""
    return L * sum(r * (LINEAR_SHAPES[t][0] + LINEAR_SHAPES[t][1]) + extra_per_matrix
                   for t in targets)


def adapter_size(m: int) -> int:
    """A bottleneck adapter (Houlsby et al., 2019): W_down (m × d) + b_down + W_up + b_up."""
    return 2 * d * m + m + d


def base_size() -> int:
    """Every entry of the GPT, the tied head counted once with the embedding."""
    block = 4 * (d * d + d) + (d * d_ff + d_ff) + (d_ff * d + d) + 2 * (2 * d)
    return VOCAB * d + CONFIG.block_size * d + L * block + 2 * d


def expected_trainable(preset: str) -> int:
    c = preset_config(preset)
    if preset in ("lora", "rslora", "lora_all", "qlora"):
        return lora_count(c.r, c.target_modules)
    if preset == "dora":  # + magnitude m, one entry per output row (Liu et al., 2024)
        return L * sum(c.r * (LINEAR_SHAPES[t][0] + LINEAR_SHAPES[t][1]) + LINEAR_SHAPES[t][1]
                       for t in c.target_modules)
    if preset == "adalora":  # P, λ, Q at init_r (Zhang et al., 2023): r(d_in + d_out + 1)
        return lora_count(c.init_r, c.target_modules, extra_per_matrix=c.init_r)
    if preset == "monteclora":  # + log Λ (r) and log α (N) per matrix
        return lora_count(c.r, c.target_modules, extra_per_matrix=c.r + c.n_samples)
    if preset in ("houlsby", "pfeiffer", "parallel"):
        per_block = 2 if preset == "houlsby" else 1  # after attention and MLP, or one of them
        return L * per_block * adapter_size(d // c.reduction_factor)
    if preset == "io_adapter":  # one before the first block, one after the last
        return 2 * adapter_size(d // c.reduction_factor)
    if preset == "ia3":  # l_k, l_v (d each) and l_ff (d_ff) per block (Liu et al., 2022)
        return L * (2 * d + d_ff)
    if preset == "prompt":  # k · d (Lester et al., 2021)
        return c.num_virtual_tokens * d
    if preset == "prefix":  # P' (P·d), MLP d → H → L·2·d (Li & Liang, 2021)
        P, H = c.num_virtual_tokens, c.hidden_size
        return P * d + d * H + H + H * (L * 2 * d) + L * 2 * d
    if preset == "deep_prompt":  # one P × d prompt per layer (Liu et al., 2022)
        return L * c.num_virtual_tokens * d
    if preset == "full":
        return base_size()
    if preset == "head_only":  # the top block and ln_f (Donahue et al., 2014)
        block = 4 * (d * d + d) + (d * d_ff + d_ff) + (d_ff * d + d) + 2 * (2 * d)
        return c.top_layers * block + 2 * d
    if preset == "bitfit":  # biases of q k v o fc proj ln1 ln2, and ln_f (Ben-Zaken et al.)
        return L * (4 * d + d_ff + d + 2 * d) + d
    if preset in ("fish", "pafi", "random_mask", "id3"):  # K = ⌈budget · N⌉ entries
        return math.ceil(c.budget * base_size())
    if preset == "intrinsic":  # φ ∈ R^d (Li et al., 2018)
        return c.d
    raise AssertionError(f"preset {preset!r} has no hand formula: add one to "
                         "expected_trainable in tests/test_contract.py")


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_trainable_count_matches_hand_formula(preset):
    peft = wrap(preset)
    trainable, _ = peft.count_parameters()
    assert trainable == expected_trainable(preset)
