"""QLoRA: LoRA on a 4-bit NormalFloat base (Dettmers et al., 2023), NF4 written from scratch.

The frozen base weights are *stored* in 4 bits and dequantised on the fly; a LoRA update in
full precision (fp32 here) trains on top:

    h = dequant(W₀^NF4) x + b + (α/r) · B A x          only A, B train; W₀^NF4 never changes

Three ingredients from the paper, each a small function below:

1. NF4, the 4-bit NormalFloat data type (`NF4`, the table published with the paper).
   Pretrained weights are roughly N(0, σ²) inside a block, so the 16 levels are quantiles
   of N(0, 1): each level then carries the same share of the weights. The paper's
   asymmetric construction gives an exact zero: 8 positive quantiles, 7 negative ones and
   0, all divided by the largest so they lie in [−1, 1] (`nf4_levels_from_quantiles`
   derives them; the code runs with the published table, which it matches to 2e-7).
2. Block-wise absmax quantisation (block of 64 numbers): per block one constant
   c = max|w|; a weight is stored as the index of the NF4 level nearest to w / c.
   Two 4-bit indices are packed into one byte (uint8).
3. Double quantisation: the fp32 constants c (32/64 = 0.5 bit per weight) are themselves
   quantised to 8 bits in blocks of 256, after subtracting their mean (they are all
   positive; centring lets a symmetric code use its full range). Cost per weight:

       4 + 8/64 + 32/(64·256) ≈ 4.127 bits       (plain absmax: 4 + 32/64 = 4.5 bits)

   plus one fp32 mean per tensor (32/N bits, negligible for large N). The 8-bit code is
   the paper's 8-bit float (`double_quant_code="dynamic"`, bitsandbytes' dynamic data type,
   the default) or, to compare, plain symmetric integers k/127 (`"int8"`).

The 4-bit codes and the absmax constants are bit-identical to bitsandbytes'
`quantize_4bit(..., quant_type="nf4")` (same table, same decision thresholds, same
arithmetic), and so are the second-level codes to its nearest-level kernel (the PyTorch and
CUDA ones; its native CPU kernel rounds through a 65,536-entry lookup table and picks
another level for about 0.3% of the constants).

Trainable parameters per target matrix: r (d_in + d_out), as in LoRA; the quantised base
(the whole of every block's q, k, v, o, fc, proj) has none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from minipeft.checks import check_choice, check_positive_int
from minipeft.methods.base import BLOCK_MODULES, TunerLayer, register_method, replace_module
from minipeft.methods.lora import LoraConfig, LoraLayer, LoraModel
from minipeft.model import GPT

ALL_BLOCK_LINEARS = list(BLOCK_MODULES)  # q k v o fc proj: what QLoRA quantises


# --------------------------------------------------------------------------------------
# The code books: NF4 and int4 (4 bits), dynamic and int8 (the 8-bit second level)
# --------------------------------------------------------------------------------------
# Dettmers et al. (2023), Appendix E (the table bitsandbytes ships): the 16 NF4 levels.
NF4_TABLE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
             -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
             0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
             0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0)


def nf4_levels_from_quantiles() -> torch.Tensor:
    """Where the NF4 table comes from: quantiles of N(0, 1), as in Dettmers et al. 2023.

    Quantiles q = Φ⁻¹(p) of the standard normal at evenly spaced probabilities p:
      positive half: 8 values, p from 0.5 (excluded, that is 0) up to p_max;
      negative half: 7 values, the mirror image with one level fewer;
    then divide by the largest |q| so the extremes are exactly ±1.
    p_max cannot be 1 (Φ⁻¹(1) = ∞). With p_max = 1 − ½(1/(2·16) + 1/(2·15)) ≈ 0.9677, the
    mean of the outermost bin centres for 16 and for 15 equal-probability bins (the value
    bitsandbytes uses), the result is the published table to within 2e-7 (torch's Φ⁻¹ in
    float64, rounded to float32, against the paper's scipy values). That is enough to move
    a decision threshold past a few weights (2 codes of 2,359,296 on a 768×3072 Gaussian
    weight differ from bitsandbytes), so the quantiser runs with the table.
    """
    p_max = 1 - 0.5 * (1 / (2 * 16) + 1 / (2 * 15))
    positive = torch.special.ndtri(torch.linspace(0.5, p_max, 9, dtype=torch.float64)[1:])
    negative = -torch.special.ndtri(torch.linspace(0.5, p_max, 8, dtype=torch.float64)[1:])
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.abs().max()).float()  # (16,), levels[0] = −1, levels[7] = 0


def int4_levels() -> torch.Tensor:
    """The baseline: 4-bit uniform symmetric integers k/7, k = −7..7 (15 of the 16 codes)."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7


def dynamic_levels() -> torch.Tensor:
    """The 256 levels of the signed 8-bit dynamic data type (Dettmers, 2016), in [−1, 1].

    QLoRA's second level is an "8-bit float" (Dettmers et al. 2023, section 3); bitsandbytes
    stores it in this code (its `create_dynamic_map()`), built the same way here. Like a
    float it has a sign, an exponent and a fraction, but the exponent is a power of ten
    and takes as many bits as it needs: the magnitudes are the centres of 2^i equal bins of
    [0.1, 1] · 10^(i−6) for i = 0..6 (1 level in [10⁻⁶, 10⁻⁵], 2 in the next decade, … 64
    in [0.1, 1]), each with both signs, plus 0 and 1. Its step is 0.014 near ±1 but
    0.0028 in [0.01, 0.1] and finer below, where k/127 has 1/127 ≈ 0.008 everywhere: the
    dynamic code is coarser for values near the group's maximum and much finer for the
    small ones, which is what a group with one outlier block consists of.
    """
    levels = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)  # 2^i equal bins
        magnitudes = 10 ** (i - 6) * (edges[:-1] + edges[1:]) / 2  # their centres · 10^(i−6)
        levels += magnitudes.tolist() + (-magnitudes).tolist()
    return torch.tensor(sorted(levels), dtype=torch.float32)  # (256,)


def int8_levels() -> torch.Tensor:
    """The simple second-level code: symmetric 8-bit integers k/127, k = −127..127."""
    return torch.arange(-127, 128, dtype=torch.float32) / 127


NF4 = torch.tensor(NF4_TABLE, dtype=torch.float32)
INT4 = int4_levels()
SECOND_LEVEL_CODES = {"dynamic": dynamic_levels(), "int8": int8_levels()}


# --------------------------------------------------------------------------------------
# Packing two 4-bit codes per byte
# --------------------------------------------------------------------------------------
def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """(N,) integer codes in 0..15, N even → (N/2,) uint8: byte = code[2i]·16 + code[2i+1]."""
    if codes.numel() % 2:
        raise ValueError(f"packing needs an even number of 4-bit codes, got {codes.numel()}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ValueError("4-bit codes must lie in 0..15")
    pairs = codes.to(torch.uint8).view(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]  # high nibble first


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_4bit: (N/2,) uint8 → (N,) int64 codes."""
    high, low = packed >> 4, packed & 0x0F
    return torch.stack([high, low], dim=1).flatten().long()


# --------------------------------------------------------------------------------------
# Block-wise absmax quantisation with a code book
# --------------------------------------------------------------------------------------
def check_block_size(block_size: int) -> None:
    check_positive_int(block_size, "block_size")
    if block_size % 2:
        raise ValueError(f"block_size must be even (two 4-bit codes share a byte), got "
                         f"{block_size!r}")


def check_divides(numel: int, block_size: int, what: str = "weight") -> None:
    if numel % block_size:
        raise ValueError(f"the {what} has {numel} entries, not a multiple of "
                         f"block_size={block_size}; choose a block size that divides {numel} "
                         f"(QLoRA uses 64)")


# bitsandbytes' floor for a block constant: an all-zero block is divided by this instead
# of by 0, and its codes are those of 0.
SMALLEST_ABSMAX = 1e-38


def absmax_quantize(blocks: torch.Tensor, levels: torch.Tensor):
    """Per row of `blocks`: c = max|w| and, per entry, the index of the level nearest to w / c.

    `levels` is a sorted code book in [−1, 1]. The decision thresholds are the midpoints
    between neighbouring levels; a value exactly on one takes the lower level. w / c is
    computed as w · (1/c), which can differ from w / c in the last bit: that is how
    bitsandbytes computes it, so ties break the same way and the codes are identical.
    Returns (codes (n_blocks, block) int64, absmax (n_blocks,) fp32).
    """
    absmax = blocks.abs().amax(dim=1)  # c_b = max |w| in block b: (n_blocks,)
    normalised = blocks * (1.0 / absmax.clamp(min=SMALLEST_ABSMAX))[:, None]  # ∈ [−1, 1]
    levels = levels.to(blocks.device)  # the code books are built on the CPU
    thresholds = (levels[1:] + levels[:-1]) / 2  # midpoints between neighbouring levels
    return torch.bucketize(normalised, thresholds), absmax  # lower level on a tie


def quantize_4bit(weight: torch.Tensor, levels: torch.Tensor,
                  block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise absmax quantisation to the nearest of `levels` (a sorted code book in [−1, 1]).

    Returns (packed codes (N/2,) uint8, absmax (N/block_size,) fp32).
    """
    check_block_size(block_size)
    check_divides(weight.numel(), block_size)
    blocks = weight.detach().float().reshape(-1, block_size)  # (n_blocks, block_size)
    codes, absmax = absmax_quantize(blocks, levels)
    return pack_4bit(codes.flatten()), absmax


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor,
                    shape: tuple[int, ...], block_size: int = 64) -> torch.Tensor:
    """ŵ = levels[code] · c_b, back to `shape` in fp32."""
    codes = unpack_4bit(packed).view(-1, block_size)  # (n_blocks, block_size)
    return (levels.to(codes.device)[codes] * absmax[:, None]).reshape(shape)


def quantize_nf4(weight: torch.Tensor, block_size: int = 64):
    """NF4: (packed uint8 codes, fp32 absmax per block)."""
    return quantize_4bit(weight, NF4, block_size)


def dequantize_nf4(packed, absmax, shape, block_size: int = 64) -> torch.Tensor:
    return dequantize_4bit(packed, absmax, NF4, shape, block_size)


def quantize_int4(weight: torch.Tensor, block_size: int = 64):
    """The int4 baseline: same blocks and absmax, uniform levels k/7."""
    return quantize_4bit(weight, INT4, block_size)


def dequantize_int4(packed, absmax, shape, block_size: int = 64) -> torch.Tensor:
    return dequantize_4bit(packed, absmax, INT4, shape, block_size)


# --------------------------------------------------------------------------------------
# Double quantisation of the absmax constants
# --------------------------------------------------------------------------------------
def check_double_quant_code(code: str) -> None:
    check_choice(code, SECOND_LEVEL_CODES, "double_quant_code")


def double_quantize(absmax: torch.Tensor, block_size: int = 256, code: str = "dynamic"):
    """8-bit quantisation of the first-level constants, mean-centred, in blocks of 256.

    c ≈ mean + levels[code] · s_g,  s_g = max|c − mean| in group g, levels = the 8-bit code
    book named by `code` ("dynamic" or "int8"), nearest level as in the first level.
    Returns (codes (n,) uint8, scales (⌈n/256⌉,) fp32, mean () fp32). The last group may be
    shorter than 256 when n is not a multiple (only small models; the cost formula assumes
    full groups).
    """
    check_positive_int(block_size, "double_quant_block_size")
    check_double_quant_code(code)
    mean = absmax.mean()
    groups = padded_groups(absmax - mean, block_size)  # (n_groups, 256), zero-padded
    codes, scales = absmax_quantize(groups, SECOND_LEVEL_CODES[code])  # s_g: (n_groups,)
    return codes.to(torch.uint8).flatten()[: absmax.numel()], scales, mean


def double_dequantize(codes: torch.Tensor, scales: torch.Tensor, mean: torch.Tensor,
                      block_size: int = 256, code: str = "dynamic") -> torch.Tensor:
    """ĉ = levels[code] · s_g + mean, (n,) fp32."""
    check_double_quant_code(code)
    book = SECOND_LEVEL_CODES[code].to(codes.device)
    levels = book[padded_groups(codes.long(), block_size)]  # (n_groups, 256)
    return (levels * scales[:, None]).flatten()[: codes.numel()] + mean


def padded_groups(values: torch.Tensor, block_size: int) -> torch.Tensor:
    """(n,) → (⌈n/block⌉, block), zero-padding the last group."""
    pad = -values.numel() % block_size
    return F.pad(values, (0, pad)).view(-1, block_size)


# --------------------------------------------------------------------------------------
# A frozen 4-bit Linear
# --------------------------------------------------------------------------------------
class Linear4bit(nn.Module):
    """nn.Linear whose weight is stored in NF4 (packed, uint8) and dequantised in forward.

    Everything is a buffer, nothing trains: the quantised base is frozen by construction.
    Buffers: codes (d_out·d_in/2,) uint8; with double quantisation absmax_codes (n_blocks,)
    uint8 (indices into the 8-bit code `double_quant_code`), absmax_scales (n_groups,) fp32,
    absmax_mean () fp32, else absmax (n_blocks,) fp32; bias (d_out,) fp32 kept in full
    precision, as in QLoRA.
    """

    def __init__(self, linear: nn.Linear, block_size: int = 64, double_quant: bool = True,
                 double_quant_block_size: int = 256, double_quant_code: str = "dynamic"):
        super().__init__()
        check_double_quant_code(double_quant_code)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block_size = block_size
        self.double_quant = double_quant
        self.double_quant_block_size = double_quant_block_size
        self.double_quant_code = double_quant_code
        codes, absmax = quantize_nf4(linear.weight, block_size)
        self.register_buffer("codes", codes)
        if double_quant:
            absmax_codes, scales, mean = double_quantize(absmax, double_quant_block_size,
                                                         double_quant_code)
            self.register_buffer("absmax_codes", absmax_codes)
            self.register_buffer("absmax_scales", scales)
            self.register_buffer("absmax_mean", mean)
        else:
            self.register_buffer("absmax", absmax)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    def block_absmax(self) -> torch.Tensor:
        if self.double_quant:
            return double_dequantize(self.absmax_codes, self.absmax_scales, self.absmax_mean,
                                     self.double_quant_block_size, self.double_quant_code)
        return self.absmax

    def dequantize(self) -> torch.Tensor:
        """Ŵ₀ in fp32: (d_out, d_in)."""
        return dequantize_nf4(self.codes, self.block_absmax(),
                              (self.out_features, self.in_features), self.block_size)

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer computes with (a fresh fp32 tensor; read-only view of W₀)."""
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), self.bias)  # Ŵ₀ x + b

    def weight_nbytes(self) -> int:
        """Bytes stored for the weight alone (codes + constants), not the bias."""
        names = (("codes", "absmax_codes", "absmax_scales", "absmax_mean") if self.double_quant
                 else ("codes", "absmax"))
        return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in names)

    def bits_per_parameter(self) -> float:
        """8 · stored bytes / number of weights (paper: ≈ 4.127 with double quantisation)."""
        return 8 * self.weight_nbytes() / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        second = f" ({self.double_quant_code})" if self.double_quant else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, NF4 "
                f"block={self.block_size}, double_quant={self.double_quant}{second}")


def quantization_error(weight: torch.Tensor, block_size: int = 64) -> dict[str, float]:
    """Mean squared error of quantise → dequantise for NF4 and for the int4 baseline."""
    nf4 = dequantize_nf4(*quantize_nf4(weight, block_size), weight.shape, block_size)
    int4 = dequantize_int4(*quantize_int4(weight, block_size), weight.shape, block_size)
    return {"nf4": F.mse_loss(nf4, weight).item(), "int4": F.mse_loss(int4, weight).item()}


def storage_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of `module` (a tied tensor counted once)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


# --------------------------------------------------------------------------------------
# QLoRA: LoRA on top of the 4-bit base
# --------------------------------------------------------------------------------------
@dataclass
class QLoraConfig(LoraConfig):
    """LoRA's fields plus the quantisation of the base.

    block_size: weights per absmax block (64 in the paper); must divide every weight's size.
    double_quant: quantise the absmax constants too (8 bit, blocks of double_quant_block_size).
    double_quant_code: the 8-bit code of that second level: "dynamic" (the paper's 8-bit
    float, bitsandbytes' dynamic data type) or "int8" (symmetric integers k/127).
    Every Linear in every block (q k v o fc proj) is quantised, whatever target_modules says:
    QLoRA freezes the whole base in 4 bits and puts LoRA on (by default) all of them.
    """

    peft_type: ClassVar[str] = "QLORA"
    target_modules: list[str] | None = field(default_factory=lambda: list(ALL_BLOCK_LINEARS))
    block_size: int = 64
    double_quant: bool = True
    double_quant_block_size: int = 256
    double_quant_code: str = "dynamic"

    def __post_init__(self):
        super().__post_init__()
        check_block_size(self.block_size)
        check_positive_int(self.double_quant_block_size, "double_quant_block_size")
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"double_quant must be True or False, got {self.double_quant!r}")
        check_double_quant_code(self.double_quant_code)


PRESETS = {
    "qlora": lambda: QLoraConfig(r=8, alpha=16, target_modules=list(ALL_BLOCK_LINEARS)),
}
LEARNING_RATES = {"qlora": 3e-3}  # AdamW rate of each preset: LoRA's


class QLoraLayer(LoraLayer):
    """A LoraLayer whose base_layer is a Linear4bit; the LoRA branch computes in fp32.

    Merging into the base in place is refused: adding ΔW to a 4-bit weight would
    re-quantise it and lose most of ΔW. `QLoraModel.merge_and_unload()` instead returns an
    fp32 model with W = Ŵ₀ + ΔW.
    """

    def cannot_merge_reason(self) -> str | None:
        return ("a QLoRA adapter cannot be merged into its 4-bit base in place "
                "(re-quantising W₀ + ΔW would lose most of ΔW); use merge_and_unload(), "
                "which returns an fp32 model with Ŵ₀ + ΔW")


QUANT_FIELDS = ("block_size", "double_quant", "double_quant_block_size", "double_quant_code")


@register_method(QLoraConfig)
class QLoraModel(LoraModel):
    """Quantise every block Linear of the frozen GPT to NF4, then add LoRA to the targets."""

    layer_class: ClassVar[type[LoraLayer]] = QLoraLayer

    def inject(self, config: QLoraConfig, adapter_name: str) -> None:
        if "head" in (config.target_modules or []):
            raise ValueError("QLoRA quantises the Linear layers inside the blocks; 'head' is "
                             "the tied token embedding, kept in fp32. Drop 'head' from "
                             "target_modules (or use LoraConfig for a head adapter)")
        first = not self.quantized_layers()
        if first:  # check every size before changing anything
            for name, linear in block_linears(self.base_model):
                check_divides(linear.weight.numel(), config.block_size, f"weight of {name}")
        else:
            self.check_same_quantization(config)
        super().inject(config, adapter_name)  # wraps the targets in QLoraLayers
        if first:
            quantize_model(self.base_model, config.block_size, config.double_quant,
                           config.double_quant_block_size, config.double_quant_code)

    def check_same_quantization(self, config: QLoraConfig) -> None:
        """A second adapter shares the already quantised base, so it must ask for the same."""
        first = next(iter(self.configs.values()))
        differ = {f: (getattr(first, f), getattr(config, f)) for f in QUANT_FIELDS
                  if getattr(first, f) != getattr(config, f)}
        if differ:
            raise ValueError(f"the base is already quantised with other settings (existing vs "
                             f"new: {differ}); give every adapter the same {QUANT_FIELDS}")

    def quantized_layers(self) -> list[tuple[str, Linear4bit]]:
        return [(n, m) for n, m in self.base_model.named_modules() if isinstance(m, Linear4bit)]

    def count_parameters(self) -> tuple[int, int]:
        """(trainable, total); total counts the 4-bit weights and biases as parameters too."""
        trainable, total = super().count_parameters()
        frozen = sum(m.in_features * m.out_features + (0 if m.bias is None else m.bias.numel())
                     for _, m in self.quantized_layers())
        return trainable, total + frozen

    def merge_and_unload(self) -> GPT:
        """A plain fp32 GPT: every 4-bit layer becomes nn.Linear with Ŵ₀ (+ ΔW where LoRA)."""
        self.check_usable("merge")
        for name, layer in list(self.lora_layers()):
            replace_module(self.base_model, name, dense_linear(layer.base_layer,
                                                               layer.delta_weight()))
        for name, layer in self.quantized_layers():
            replace_module(self.base_model, name, dense_linear(layer, None))
        return self.unload()


def block_linears(model: GPT) -> list[tuple[str, nn.Linear]]:
    """Every block's q k v o fc proj as (name, nn.Linear), looking inside wrapped layers."""
    found = []
    for i in range(len(model.blocks)):
        for path in BLOCK_MODULES.values():
            name = f"blocks.{i}.{path}"
            module = model.get_submodule(name)
            found.append((name, module.base_layer if isinstance(module, TunerLayer) else module))
    return found


def quantize_model(model: GPT, block_size: int = 64, double_quant: bool = True,
                   double_quant_block_size: int = 256, double_quant_code: str = "dynamic") -> GPT:
    """Replace every block Linear by its Linear4bit, in place (inside a wrapper if wrapped)."""
    check_block_size(block_size)
    linears = block_linears(model)
    for name, linear in linears:  # check every size before changing anything
        check_divides(linear.weight.numel(), block_size, f"weight of {name}")
    for name, linear in linears:
        quantized = Linear4bit(linear, block_size, double_quant, double_quant_block_size,
                               double_quant_code)
        module = model.get_submodule(name)
        if isinstance(module, TunerLayer):
            module.base_layer = quantized
        else:
            replace_module(model, name, quantized)
    return model


@torch.no_grad()
def dense_linear(layer: Linear4bit, delta: torch.Tensor | None) -> nn.Linear:
    """An fp32 nn.Linear with weight Ŵ₀ (+ ΔW), frozen like the rest of the base."""
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    weight = layer.dequantize()
    linear.weight.copy_(weight if delta is None else weight + delta)
    if layer.bias is not None:
        linear.bias.copy_(layer.bias)
    linear.requires_grad_(False)
    return linear


def qlora_memory(model: GPT, config: QLoraConfig | None = None) -> dict[str, int]:
    """Bytes of `model` in fp32 vs. as QLoRA (NF4 blocks + fp32 embeddings/LN + fp32 LoRA).

    Works on a copy: `model` is left untouched.
    """
    import copy

    from minipeft.methods.base import get_peft_model

    config = config or PRESETS["qlora"]()
    fp32 = storage_bytes(model)
    peft = get_peft_model(copy.deepcopy(model), config)
    lora = sum(p.numel() * p.element_size() for p in peft.trainable_parameters())
    return {"fp32": fp32, "qlora": storage_bytes(peft), "lora": lora}


def bits_per_parameter_formula(block_size: int = 64, double_quant: bool = True,
                               double_quant_block_size: int = 256) -> float:
    """4 + 8/64 + 32/(64·256) with double quantisation, 4 + 32/64 without (fp32 absmax)."""
    if double_quant:
        return 4 + 8 / block_size + 32 / (block_size * double_quant_block_size)
    return 4 + 32 / block_size


__all__ = ["QLoraConfig", "QLoraModel", "QLoraLayer", "Linear4bit", "NF4", "NF4_TABLE",
           "nf4_levels_from_quantiles", "int4_levels", "dynamic_levels", "int8_levels", "pack_4bit", "unpack_4bit", "quantize_nf4", "dequantize_nf4",
           "quantize_int4", "dequantize_int4", "double_quantize", "double_dequantize",
           "quantization_error", "storage_bytes", "qlora_memory", "quantize_model",
           "bits_per_parameter_formula", "PRESETS"]
