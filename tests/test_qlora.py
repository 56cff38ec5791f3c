"""Tests for NF4 quantisation and QLoRA (minipeft.methods.qlora).

Independent references: the NF4 table published with the QLoRA paper, bitsandbytes itself
(codes, constants and the nested constants of `quantize_4bit`, its dynamic 8-bit code),
brute-force nearest-level quantisation written here with argmin, hand-packed bytes, the
bits-per-parameter formula, and dense W x + (α/r) B A x built from the tensors.
"""
import copy

import pytest
import torch
import torch.nn as nn

from minipeft.methods.base import get_peft_model
from minipeft.methods.base import PeftConfig
from minipeft.methods.qlora import (NF4, PRESETS, Linear4bit, QLoraConfig, QLoraModel,
                                    bits_per_parameter_formula, dequantize_int4,
                                    dequantize_nf4, double_dequantize, double_quantize,
                                    dynamic_levels, nf4_levels_from_quantiles, pack_4bit,
                                    qlora_memory, quantization_error, quantize_int4,
                                    quantize_nf4, storage_bytes, unpack_4bit)
from minipeft.model import GPT, GPTConfig
from helpers import assert_preset_learns_sentiment

torch.set_num_threads(1)
VOCAB = 64

# Dettmers et al. (2023), Appendix E / bitsandbytes: the NF4 data type's 16 values.
PAPER_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
             -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
             0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
             0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def tiny_gpt(seed: int = 0, d_model: int = 16) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, d_model=d_model))


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(seed))


def gaussian(shape, seed=0, std=0.02) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std


def brute_force_quantize(weight: torch.Tensor, levels: torch.Tensor, block: int) -> torch.Tensor:
    """Nearest level by exhaustive search, fp32 absmax per block; returns the reconstruction."""
    blocks = weight.reshape(-1, block)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    distance = (blocks[..., None] / absmax[..., None] - levels).abs()  # (n, block, 16)
    return (levels[distance.argmin(dim=-1)] * absmax).reshape(weight.shape)


# --------------------------------------------------------------------------------------
# NF4 levels, packing, quantisation error
# --------------------------------------------------------------------------------------
def test_nf4_levels_are_the_paper_table_and_its_normal_quantiles():
    assert torch.equal(NF4, torch.tensor(PAPER_NF4))  # the table the quantiser runs with
    derived = nf4_levels_from_quantiles()  # the derivation taught beside it
    assert (derived - torch.tensor(PAPER_NF4)).abs().max() <= 2e-7
    assert (derived > 0).sum() == 8 and (derived < 0).sum() == 7 and (derived == 0).sum() == 1


def test_packing_puts_two_codes_in_a_byte_and_round_trips():
    codes = torch.tensor([1, 2, 15, 0, 7, 8])
    packed = pack_4bit(codes)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [0x12, 0xF0, 0x78]  # high nibble first, by hand
    everything = torch.randint(0, 16, (1000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(unpack_4bit(pack_4bit(everything)), everything)


def test_nf4_picks_the_nearest_level_in_each_block():
    w = gaussian((32, 64))
    packed, absmax = quantize_nf4(w, 64)
    assert packed.numel() == w.numel() // 2 and absmax.numel() == w.numel() // 64
    expected = brute_force_quantize(w, torch.tensor(PAPER_NF4), 64)
    assert torch.allclose(dequantize_nf4(packed, absmax, w.shape, 64), expected, atol=1e-6)


def test_int4_baseline_is_uniform_absmax():
    w = gaussian((16, 64), seed=3)
    expected = brute_force_quantize(w, torch.arange(-7, 8) / 7, 64)
    packed, absmax = quantize_int4(w, 64)
    assert torch.allclose(dequantize_int4(packed, absmax, w.shape, 64), expected, atol=1e-6)


def test_nf4_error_is_lower_than_int4_on_gaussian_weights():
    w = gaussian((256, 256), seed=4)
    errors = quantization_error(w, 64)
    nf4 = brute_force_quantize(w, torch.tensor(PAPER_NF4), 64)
    int4 = brute_force_quantize(w, torch.arange(-7, 8) / 7, 64)
    assert errors["nf4"] == pytest.approx(((nf4 - w) ** 2).mean().item(), rel=1e-4)
    assert errors["int4"] == pytest.approx(((int4 - w) ** 2).mean().item(), rel=1e-4)
    assert errors["nf4"] < 0.9 * errors["int4"]


def test_int8_double_quantization_error_is_within_half_a_step():
    absmax = gaussian((1000,), seed=5).abs() + 0.01  # positive constants, n not a multiple of 256
    codes, scales, mean = double_quantize(absmax, 256, "int8")
    assert codes.dtype == torch.uint8 and scales.numel() == 4
    assert mean.item() == pytest.approx(absmax.mean().item())
    restored = double_dequantize(codes, scales, mean, 256, "int8")
    for g in range(4):  # rounding to k/127 of max|c − mean| errs by at most half a step
        group = slice(256 * g, 256 * (g + 1))
        step = (absmax[group] - absmax.mean()).abs().max() / 127
        assert (restored[group] - absmax[group]).abs().max() <= step / 2 + 1e-7


def test_dynamic_double_quantization_picks_the_nearest_dynamic_level():
    absmax = gaussian((1000,), seed=6).abs() + 0.01
    codes, scales, mean = double_quantize(absmax, 256)  # "dynamic" is the default
    restored = double_dequantize(codes, scales, mean, 256)
    levels = dynamic_levels()
    assert levels.shape == (256,) and torch.equal(levels, levels.sort().values)
    assert levels.max() == 1.0 and (levels == 0).sum() == 1 and levels.min() > -1
    for g in range(4):  # brute force: the closest of the 256 levels · s_g, plus the mean
        centred = absmax[256 * g: 256 * (g + 1)] - mean
        scale = centred.abs().max()
        candidates = levels * scale + mean  # (256,)
        best = (absmax[256 * g: 256 * (g + 1), None] - candidates).abs().min(dim=1).values
        error = (restored[256 * g: 256 * (g + 1)] - absmax[256 * g: 256 * (g + 1)]).abs()
        assert torch.allclose(error, best, atol=1e-8)
        assert scales[g] == scale


def test_dynamic_code_beats_int8_on_heavy_tailed_weights():
    """One outlier block sets the int8 step for its whole group of 256; the dynamic code
    keeps its relative precision for the small constants."""
    torch.manual_seed(9)
    w = torch.distributions.StudentT(2.0).sample((256, 1024)) * 0.02
    _, absmax = quantize_nf4(w, 64)
    errors = {}
    for code in ("dynamic", "int8"):
        restored = double_dequantize(*double_quantize(absmax, 256, code), 256, code)
        errors[code] = ((restored - absmax).abs() / absmax).mean().item()
    assert errors["dynamic"] < 0.6 * errors["int8"]


def test_stored_bytes_match_the_bits_per_parameter_formula():
    linear = nn.Linear(128, 128)  # N = 16,384 = 64 · 256: whole blocks at both levels
    n = linear.weight.numel()
    q = Linear4bit(linear, block_size=64, double_quant=True, double_quant_block_size=256)
    # codes N/2 bytes + one int8 per 64 weights + one fp32 per 64·256 weights + one fp32 mean
    assert q.weight_nbytes() == n // 2 + n // 64 + 4 * n // (64 * 256) + 4
    assert q.codes.dtype == torch.uint8 and q.codes.numel() == n // 2
    assert 8 * (q.weight_nbytes() - 4) / n == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert bits_per_parameter_formula() == pytest.approx(4.127, abs=1e-3)
    plain = Linear4bit(linear, block_size=64, double_quant=False)
    assert plain.bits_per_parameter() == pytest.approx(4 + 32 / 64)


# --------------------------------------------------------------------------------------
# Against bitsandbytes (CPU): codes and constants bit for bit
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bnb():
    return pytest.importorskip("bitsandbytes.functional",
                               reason="the bitsandbytes parity tests need bitsandbytes "
                                      "(pip install -r requirements-dev.txt)")


def test_nf4_codes_and_absmax_equal_bitsandbytes_on_a_gpt2_sized_weight(bnb):
    w = gaussian((768, 3072), seed=7)  # GPT-2 small's mlp.c_fc shape, N(0, 0.02²)
    packed, absmax = quantize_nf4(w, 64)
    theirs, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(packed, theirs.flatten())  # 2,359,296 codes, high nibble first in both
    assert torch.equal(absmax, state.absmax)
    assert torch.equal(dequantize_nf4(packed, absmax, w.shape, 64),
                       bnb.dequantize_4bit(theirs, state))


def test_nf4_ties_and_zero_blocks_round_as_bitsandbytes(bnb):
    """Values exactly on a decision threshold (midway between two levels) take the lower
    level, and an all-zero block codes as 0, in both."""
    table = torch.tensor(PAPER_NF4)
    midpoints = (table[1:] + table[:-1]) / 2  # the 15 thresholds, fp32
    after = torch.nextafter(midpoints, torch.tensor(2.0))  # one fp32 step above each
    ties = torch.cat([torch.ones(1), midpoints, after, -midpoints, -after])  # absmax 1
    ties = torch.cat([ties, torch.zeros(64 - ties.numel())])
    halved = ties * 0.5  # absmax 0.5: 1/0.5 is exact, the ties stay ties
    # w / c lands on one side of a threshold and w · (1/c) on the other (found by search):
    # bitsandbytes computes the latter
    last_bit = torch.zeros(64)
    last_bit[:3] = torch.tensor([0.8408042788505554, -0.5134227275848389, -0.3867659866809845])
    w = torch.cat([ties, halved, torch.zeros(64), last_bit])  # four blocks of 64
    assert torch.bucketize(last_bit[1:3] / last_bit[0], midpoints).tolist() == [1, 2]
    packed, absmax = quantize_nf4(w, 64)
    theirs, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(packed, theirs.flatten()) and torch.equal(absmax, state.absmax)
    codes = unpack_4bit(packed)
    assert codes[1:16].tolist() == list(range(15))  # threshold i → level i, the lower one
    assert codes[16:31].tolist() == list(range(1, 16))  # just above it → the upper one
    assert (codes[128:192] == 7).all() and absmax[2] == 0  # all-zero block: level 0.0
    assert codes[193:195].tolist() == [2, 3]


def bnb_reference_quantize_blockwise(values, code, block_size):
    """bitsandbytes' own PyTorch kernel for quantize_blockwise (nearest level, as its CUDA
    kernel), which CPU dispatch otherwise replaces by a native one (see below)."""
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return op.redispatch(keys, values, code, block_size)


@pytest.mark.parametrize("tails", ["gaussian", "student_t"])
def test_double_quantization_equals_bitsandbytes_nested_statistics(bnb, tails):
    torch.manual_seed(8)
    w = torch.randn(768, 3072) * 0.02 if tails == "gaussian" else \
        torch.distributions.StudentT(3.0).sample((768, 3072)) * 0.02
    _, absmax = quantize_nf4(w, 64)
    codes, scales, mean = double_quantize(absmax, 256)
    restored = double_dequantize(codes, scales, mean, 256)
    _, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(dynamic_levels(), bnb.create_dynamic_map())  # the same 8-bit code
    assert mean == state.offset and torch.equal(scales, state.state2.absmax)
    # Bit for bit against bitsandbytes' nearest-level kernel ...
    reference, _ = bnb_reference_quantize_blockwise(absmax - state.offset,
                                                    bnb.create_dynamic_map(), 256)
    assert torch.equal(codes, reference)
    # ... and against the codes bitsandbytes stores on CPU: its native kernel rounds x to a
    # grid of 65,536 points over [−1, 1] and takes the level nearest to that point, so its
    # level can be up to 2/65535 farther from x than the nearest one; ours is never farther.
    assert (codes == state.absmax).float().mean() > 0.99
    x = (absmax - mean) / scales.repeat_interleave(256)[: absmax.numel()]  # normalised c
    ours_error = (dynamic_levels()[codes.long()] - x).abs()
    theirs_error = (dynamic_levels()[state.absmax.long()] - x).abs()
    assert (ours_error <= theirs_error).all()
    assert (theirs_error <= ours_error + 2 / 65535 + 1e-7).all()
    theirs = bnb.dequantize_blockwise(state.absmax, state.state2) + state.offset
    assert ((restored - absmax).abs() <= (theirs - absmax).abs() + 1e-9).all()


# --------------------------------------------------------------------------------------
# The 4-bit layer and QLoRA
# --------------------------------------------------------------------------------------
def test_linear4bit_forward_uses_the_quantized_weight_and_full_bias():
    linear = nn.Linear(64, 32)
    q = Linear4bit(linear, block_size=64, double_quant=False)
    x = torch.randn(5, 64)
    w_hat = brute_force_quantize(linear.weight.detach(), torch.tensor(PAPER_NF4), 64)
    assert torch.allclose(q(x), x @ w_hat.T + linear.bias, atol=1e-5)
    assert not list(q.parameters())  # nothing to train


def test_qlora_forward_is_dequantized_base_plus_fp32_lora():
    base = tiny_gpt()
    reference = copy.deepcopy(base)
    config = QLoraConfig(r=4, alpha=8, double_quant=False)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for _, layer in model.lora_layers():
            layer.B.normal_(std=0.3)
    x = torch.randn(2, 16)
    layer = model.base_model.blocks[1].attn.q
    w0 = reference.blocks[1].attn.q.weight.detach()
    w_hat = brute_force_quantize(w0, torch.tensor(PAPER_NF4), 64)
    expected = x @ w_hat.T + reference.blocks[1].attn.q.bias + 2.0 * x @ layer.A.T @ layer.B.T
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert layer.A.dtype == torch.float32 and isinstance(layer.base_layer, Linear4bit)


def test_every_block_linear_is_quantized_and_only_lora_trains():
    n_base = tiny_gpt().num_parameters()
    model = get_peft_model(tiny_gpt(), QLoraConfig(r=2, alpha=4, target_modules=["q"]))
    assert len(model.quantized_layers()) == 2 * 6  # q k v o fc proj in both blocks
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_A" in n or "lora_B" in n for n in trainable) and len(trainable) == 4
    trained, total = model.count_parameters()
    assert trained == 2 * 2 * (16 + 16)  # r (d_in + d_out) per target, two blocks
    assert total == n_base + trained  # the 4-bit weights still count as (frozen) parameters


def test_training_changes_lora_only_and_leaves_the_4bit_base_alone():
    model = get_peft_model(tiny_gpt(), QLoraConfig(r=2, alpha=4))
    codes_before = {n: b.clone() for n, b in model.named_buffers()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    x = tokens()
    model(x, x).loss.backward()
    optimizer.step()
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, codes_before[name]), name


def test_merge_and_unload_returns_an_fp32_gpt_with_the_same_logits():
    model = get_peft_model(tiny_gpt(), QLoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for _, layer in model.lora_layers():
            layer.B.normal_(std=0.3)
    x = tokens()
    expected = model(x).logits
    with pytest.raises(RuntimeError, match="merge_and_unload"):
        model.merge()
    merged = model.merge_and_unload()
    assert isinstance(merged, GPT)
    assert all(not isinstance(m, Linear4bit) for m in merged.modules())
    assert torch.allclose(merged(x).logits, expected, atol=1e-5)


def test_memory_is_smaller_than_fp32():
    base = tiny_gpt(d_model=64)
    memory = qlora_memory(base)
    assert memory["fp32"] == storage_bytes(base)
    block_weights = sum(m.weight.numel() for b in base.blocks for m in b.modules()
                        if isinstance(m, nn.Linear))
    # the block weights drop from 32 to about 4.13 bits; the rest stays, LoRA is added
    saved = block_weights * 4 - block_weights * 4.127 / 8
    assert memory["qlora"] == pytest.approx(memory["fp32"] - saved + memory["lora"], rel=0.01)


@pytest.mark.parametrize("bad, message", [
    (dict(block_size=48), "not a multiple of block_size=48"),  # 16·16 = 256 is not 48·k
    (dict(block_size=7), "block_size must be even"),
    (dict(double_quant_block_size=0), "positive integer"),
    (dict(double_quant_code="fp8"), "unknown double_quant_code .fp8.; choose one of"),
    (dict(double_quant="yes"), "True or False"),
    (dict(target_modules=["head"]), "tied token embedding"),
])
def test_bad_configs_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        get_peft_model(tiny_gpt(), QLoraConfig(r=2, alpha=4, **bad))


def test_bad_block_size_leaves_the_model_untouched():
    base = tiny_gpt()
    with pytest.raises(ValueError):
        get_peft_model(base, QLoraConfig(r=2, block_size=48))
    assert all(isinstance(m, nn.Linear) for m in (base.blocks[0].attn.q, base.blocks[1].mlp.fc))


def test_second_adapter_must_share_the_quantization():
    model = get_peft_model(tiny_gpt(), QLoraConfig(r=2))
    with pytest.raises(ValueError, match="already quantised"):
        model.add_adapter("other", QLoraConfig(r=2, double_quant=False))
    with pytest.raises(ValueError, match="double_quant_code"):
        model.add_adapter("other", QLoraConfig(r=2, double_quant_code="int8"))


def test_double_quant_code_is_saved_and_used_after_loading(tmp_path):
    config = QLoraConfig(r=2, alpha=4, double_quant_code="int8")
    assert PeftConfig.from_dict(config.to_dict()) == config
    model = get_peft_model(tiny_gpt(), config)
    model.save_pretrained(tmp_path)
    loaded = QLoraModel.from_pretrained(tiny_gpt(), tmp_path)
    assert loaded.config.double_quant_code == "int8"
    assert all(m.double_quant_code == "int8" for _, m in loaded.quantized_layers())
    x = tokens()
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_preset_builds():
    model = get_peft_model(tiny_gpt(), PRESETS["qlora"]())
    assert isinstance(model, QLoraModel)


@pytest.mark.slow
def test_small_learns_sentiment_above_chance():
    assert_preset_learns_sentiment("qlora")
