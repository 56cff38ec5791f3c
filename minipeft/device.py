"""Where a model runs and in which precision: one device (CPU, a GPU, Apple's MPS), fp32 or bf16.

    device = default_device()          # CUDA when this machine has it, else the CPU;
                                       # MINIPEFT_DEVICE=cpu (or cuda, cuda:1, mps) overrides
    model = load_pretrained("small").to(device)

Every helper that builds tensors (batches, label ids, prompts) puts them on the device of
the model it feeds (`model_device`), so nothing else needs to name the device.

Mixed precision (`precision="bf16"`) runs the forward pass under `torch.autocast`: matrix
products are computed in bfloat16 while φ, its gradients and AdamW's moments stay fp32
(Micikevicius et al., 2018, "Mixed Precision Training", §3.1 keep an fp32 master copy of
the weights; bfloat16 has fp32's exponent range, so no loss scaling is needed).
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn as nn

DEVICE_ENV = "MINIPEFT_DEVICE"
DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str) -> torch.device:
    """`name` ("auto", "cpu", "cuda", "cuda:1", "mps") as a torch.device this machine has.

    auto = the first CUDA GPU when there is one, else the CPU. Anything this machine lacks
    is one error naming what to use instead.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r} ({err}); use auto, cpu or cuda") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this machine has no usable CUDA "
                             "GPU (or this torch build has no CUDA); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but this machine has "
                             f"{torch.cuda.device_count()} CUDA GPU(s); use cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} asked for, but MPS (Apple GPU) is not "
                             "available here; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r} is not supported; use auto, cpu, cuda or mps")
    return device


def default_device() -> torch.device:
    """The device notebooks and scripts should use: $MINIPEFT_DEVICE if set, else auto."""
    return resolve_device(os.environ.get(DEVICE_ENV, "auto"))


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer): where its inputs must go."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_precision(precision: str, device: torch.device) -> str:
    """`precision` if `device` can train in it; otherwise one error naming the fix."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support "
                             "(it needs compute capability 8.0, Ampere, or newer); use "
                             "--precision fp32")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"bf16 autocast is supported here on cpu and cuda, not "
                             f"{device.type}; use --precision fp32")
    return precision


def autocast(device: torch.device, precision: str):
    """A context for the forward pass: bf16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
