"""Pretrained checkpoints shipped in data/checkpoints/, and the command that rebuilds them.

Three sizes let the notebooks show effects of scale (e.g. prompt tuning closes the gap to
full fine-tuning as the model grows, Lester et al. 2021). Every checkpoint is pretrained
from scratch on the toy-world corpus (`minipeft.corpus`) with the shared training loop;
`python -m minipeft pretrain --size small` reproduces one bit-for-bit on the same machine
(`--device cuda` pretrains on a GPU, with the same data and initial weights).

Weights are stored as fp16 safetensors (half the bytes of fp32) and loaded back as fp32.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from minipeft.checks import check_positive_int
from minipeft.files import atomic_write_bytes, safetensors_bytes
from minipeft.model import GPT, GPTConfig
from minipeft.paths import CHECKPOINT_DIR
from minipeft.train import lm_loss, lm_windows, train_loop

REBUILD_HINT = "rebuild it with `python -m minipeft pretrain --size {name}`"


@dataclass(frozen=True)
class PretrainRecipe:
    config: GPTConfig
    steps: int
    batch_size: int
    lr: float


VOCAB_SIZE = 2048
SIZES: dict[str, PretrainRecipe] = {
    "tiny": PretrainRecipe(GPTConfig(VOCAB_SIZE, 128, n_layer=3, n_head=4, d_model=64),
                           steps=3000, batch_size=32, lr=1e-3),
    "small": PretrainRecipe(GPTConfig(VOCAB_SIZE, 128, n_layer=4, n_head=4, d_model=128),
                            steps=3000, batch_size=32, lr=1e-3),
    "base": PretrainRecipe(GPTConfig(VOCAB_SIZE, 128, n_layer=6, n_head=8, d_model=256),
                           steps=3000, batch_size=32, lr=1e-3),
}

TRAIN_DOCUMENTS, VALIDATION_DOCUMENTS = 30_000, 1_000
TRAIN_SEED, VALIDATION_SEED = 0, 1


def recipe(name: str) -> PretrainRecipe:
    if name not in SIZES:
        raise ValueError(f"unknown checkpoint {name!r}; available sizes: {list(SIZES)}")
    return SIZES[name]


def corpus_tokens(n_documents: int, seed: int, tokenizer) -> torch.Tensor:
    """The corpus as one token stream, documents separated by end-of-text."""
    from minipeft.corpus import generate_corpus

    ids: list[int] = []
    for doc in generate_corpus(n_documents, seed=seed):
        ids += tokenizer.encode(doc) + [tokenizer.eos_id]
    return torch.tensor(ids, dtype=torch.long)


def check_device(device: str) -> torch.device:
    """`device` as a torch.device, or one clear error if this machine does not have it."""
    try:
        checked = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r} ({err}); use 'cpu' or 'cuda'") from err
    if checked.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch build has no usable "
                         "GPU; pretrain on 'cpu' instead")
    return checked


def pretrain(name: str, steps: int | None = None, seed: int = 0, progress: bool = True,
             device: str = "cpu", checkpoint_dir: str | Path | None = None,
             checkpoint_every: int | None = None, resume: bool = False) -> tuple[GPT, dict]:
    """Pretrain the `name` model from scratch; returns the model (on the CPU) and a report.

    On a GPU (`device="cuda"`) the initial weights and the batches are the same as on the
    CPU (both are drawn on the CPU), but the kernels round differently, so the weights end
    up close to, not equal to, a CPU run's. `checkpoint_dir` / `checkpoint_every` /
    `resume`: continue a killed run exactly (see minipeft.train.train_loop).
    """
    from minipeft.tokenizer import load_tokenizer

    spec = recipe(name)
    steps = spec.steps if steps is None else check_positive_int(steps, "steps")
    target = check_device(device)
    tokenizer = load_tokenizer()
    if tokenizer.vocab_size != spec.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, config expects "
                         f"{spec.config.vocab_size}")
    train_tokens = corpus_tokens(TRAIN_DOCUMENTS, TRAIN_SEED, tokenizer)
    val_tokens = corpus_tokens(VALIDATION_DOCUMENTS, VALIDATION_SEED, tokenizer)
    torch.manual_seed(seed)
    model = GPT(spec.config).to(target)
    block = spec.config.block_size
    batches = lm_windows(train_tokens.to(target), block, spec.batch_size, seed=seed)
    result = train_loop(model, batches, steps, lr=spec.lr, weight_decay=0.1, seed=seed,
                        progress=progress, desc=f"pretrain {name}",
                        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                        resume=resume)
    model.cpu()
    report = {
        "size": name,
        "parameters": model.num_parameters(),
        "steps": steps,
        "train_tokens": len(train_tokens),
        "validation_loss": lm_loss(model, val_tokens, block),
        "uniform_loss_lnV": math.log(spec.config.vocab_size),
        "seconds": round(result.seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "device": (torch.cuda.get_device_name(target) if target.type == "cuda" else "cpu"),
        "torch": torch.__version__,
    }
    return model, report


def save_checkpoint(model: GPT, name: str, report: dict) -> None:
    CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    # The head shares its weight with tok_emb; safetensors stores each tensor once.
    state = {k: v.to(torch.float16).contiguous()
             for k, v in model.state_dict().items() if k != "head.weight"}
    meta = {"config": json.dumps(model.config.to_dict()), "report": json.dumps(report)}
    atomic_write_bytes(CHECKPOINT_DIR / f"{name}.safetensors", safetensors_bytes(state, meta))


def load_pretrained(name: str = "small", directory: Path | None = None) -> GPT:
    """A pretrained GPT from data/checkpoints (or `directory`), in eval mode, fp32."""
    recipe(name)  # unknown names fail here with the list of sizes
    path = Path(directory or CHECKPOINT_DIR) / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} is missing; " + REBUILD_HINT.format(name=name))
    try:
        config = GPTConfig(**json.loads(read_metadata(path)["config"]))
        state = load_file(str(path))
    except (SafetensorError, ValueError, KeyError, json.JSONDecodeError, OSError) as err:
        raise ValueError(f"checkpoint {path} is corrupt or not a minipeft checkpoint ({err}); "
                         + REBUILD_HINT.format(name=name)) from err
    model = GPT(config)
    state = {k: v.float() for k, v in state.items()}
    state["head.weight"] = state["tok_emb.weight"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not match its config ({err}); "
                         + REBUILD_HINT.format(name=name)) from err
    return model.eval()


def read_metadata(path: Path) -> dict:
    """The metadata strings of a safetensors file (its header: 8-byte length, then JSON)."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if not 0 < header_len <= path.stat().st_size - 8:
            raise ValueError(f"header length {header_len} does not fit in the file")
        return json.loads(f.read(header_len))["__metadata__"]


def checkpoint_report(name: str) -> dict:
    """The pretraining report stored beside the weights (loss, time, parameters)."""
    return json.loads(read_metadata(CHECKPOINT_DIR / f"{name}.safetensors")["report"])


def rebuild(name: str, steps: int | None = None, progress: bool = True,
            device: str = "cpu", **checkpointing) -> dict:
    """Pretrain and save one checkpoint; returns its report.

    `checkpointing`: checkpoint_dir, checkpoint_every and resume, passed to `pretrain`.
    """
    start = time.perf_counter()
    model, report = pretrain(name, steps=steps, progress=progress, device=device,
                             **checkpointing)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    save_checkpoint(model, name, report)
    return report
