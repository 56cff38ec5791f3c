"""Several processes under torchrun: data parallelism with torch's DistributedDataParallel.

    python -m torch.distributed.run --nproc_per_node 2 -m minipeft finetune --method lora ...

torchrun starts N copies of the command and gives each its RANK, LOCAL_RANK and WORLD_SIZE.
`init_from_environment` joins them into one process group (gloo on the CPU, nccl on CUDA
GPUs, one GPU per process). Inside `minipeft.train.train_loop` every rank draws the same
global batch and keeps its own slice of rows (`--batch-size` is the global batch); DDP
all-reduces the gradients of the trainable parameters φ (only those: the frozen base has
no gradients), so every rank applies the same AdamW update and keeps the same φ. Rank 0
alone logs, draws the progress bar, evaluates and saves.

Why the loss is re-weighted: the single-process loss is a mean over the answer tokens of
the whole batch, L = (1/N) Σ_i ℓ_i. Rank r holds n_r of those tokens and computes the mean
L_r over them; DDP averages gradients over the W ranks. Backpropagating W · (n_r / N) · L_r
on rank r gives (1/W) Σ_r W (n_r/N) ∇L_r = (1/N) Σ_i ∇ℓ_i = ∇L, the single-process
gradient (Goyal et al., 2017, "Accurate, Large Minibatch SGD", §2.2: the global batch is
what defines the update).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn

from minipeft.device import resolve_device


def launched_with_several_processes() -> bool:
    """True inside torchrun with WORLD_SIZE > 1 (one process needs no process group)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: torch.device) -> torch.device:
    """Join torchrun's process group; returns this rank's device (cuda:LOCAL_RANK on GPUs)."""
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        device = resolve_device(f"cuda:{local_rank}")  # one GPU per process
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"several processes run on cpu (gloo) or cuda (nccl), not "
                         f"{device.type}; use --device cpu or cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return device


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def check_batch_fits_world(batch_size: int, world: int) -> None:
    """Each rank takes an equal share of the global batch, so W must divide it.

    Equal shares keep the ranks in step (the same work, no rank waiting on a longer one)
    and make the slicing exact; an uneven split would need per-rank batch sizes for no gain.
    """
    if world > batch_size:
        raise ValueError(f"{world} processes but a global batch of {batch_size}: every "
                         f"process needs at least one example; use --batch-size ≥ {world} "
                         f"or fewer processes")
    if batch_size % world:
        raise ValueError(f"the global batch of {batch_size} does not split evenly over "
                         f"{world} processes; use a --batch-size that is a multiple of {world}")


def check_can_wrap(model: nn.Module) -> None:
    """Refuse a model that DDP cannot train like one process does, before any step.

    ID3 (a MaskModel with `id3`) picks the entries φ grows into from dense gradients of
    the frozen weights (its probe tensors); those are not parameters, so DDP would not
    all-reduce them and each rank would pick different entries.
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters (requires_grad=True): DDP "
                         "has nothing to all-reduce; did you forget get_peft_model()?")
    if getattr(model, "id3", None) is not None:
        raise ValueError("ID3 chooses its entries from gradients of the frozen weights, which "
                         "DDP does not all-reduce, so the ranks would disagree; train id3 in "
                         "one process (without torchrun)")


def rows_of_this_rank(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """This rank's contiguous share of the global batch's rows (rank r: rows r·B/W …)."""
    world, me = world_size(), rank()
    check_batch_fits_world(len(batch[0]), world)
    share = len(batch[0]) // world
    return tuple(t[me * share: (me + 1) * share] for t in batch)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` inside DistributedDataParallel (its state is broadcast from rank 0 first).

    forward_sync_buffers=False: buffers that training updates (AdaLoRA's importance scores)
    change the same way on every rank, from the same all-reduced gradients.
    """
    check_can_wrap(model)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Σ over ranks of a tensor (a copy; the input is not changed)."""
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def check_replicas_agree(params: list[torch.Tensor]) -> None:
    """Every rank must end with rank 0's φ: compare each rank's φ with a broadcast copy."""
    if world_size() == 1:
        return
    flat = torch.cat([p.detach().reshape(-1).float() for p in params])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    differs = torch.tensor([float(not torch.equal(flat, reference))], device=flat.device)
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    if differs.item():
        raise RuntimeError("after training, the ranks hold different φ; the run is not "
                           "saved. Please report this with the command line you used")


def finish() -> None:
    """Leave the process group. No barrier: after training no collective is left (rank 0
    evaluates and saves alone), and a rank that failed must not wait for the others."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
