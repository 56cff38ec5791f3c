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
from safetensors import SafetensorError, safe_open

from minipeft.checks import check_positive_int
from minipeft.device import resolve_device
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
    target = resolve_device(device)
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
    # decay_vectors=True: the shipped checkpoints were pretrained with decay on every tensor.
    result = train_loop(model, batches, steps, lr=spec.lr, weight_decay=0.1, seed=seed,
                        decay_vectors=True, progress=progress, desc=f"pretrain {name}",
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
        "device": (torch.cuda.get_device_name(target) if target.type == "cuda" else target.type),
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
    """A pretrained GPT from data/checkpoints (or `directory`), in eval mode, fp32.

    The file must hold exactly the tensors of size `name`'s recipe, as floating-point finite
    numbers; anything else is one error that names the file and how to rebuild it.
    """
    path = checkpoint_path(name, directory)
    metadata, state = read_checkpoint(path, name)
    model = GPT(recipe(name).config)  # sizes come from the recipe, never from the file
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "head.weight"}
    check_checkpoint_matches(path, name, state, expected, stored_config(path, name, metadata))
    state = {k: v.float() for k, v in state.items()}
    state["head.weight"] = state["tok_emb.weight"]  # tied: one tensor, two names
    model.load_state_dict(state)
    return model.eval()


def checkpoint_path(name: str, directory: Path | None = None) -> Path:
    """Where size `name`'s checkpoint is; an unknown size or a missing file is an error."""
    recipe(name)  # unknown names fail here with the list of sizes
    path = Path(directory or CHECKPOINT_DIR) / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} is missing; " + REBUILD_HINT.format(name=name))
    return path


def read_checkpoint(path: Path, name: str, tensors: bool = True
                    ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file, or one error with its path and the fix.

    tensors=False reads only the metadata (the header), not the weights.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"checkpoint {path} is corrupt or not a minipeft checkpoint ({err}); "
                         + REBUILD_HINT.format(name=name)) from None
    return metadata, state


def stored_config(path: Path, name: str, metadata: dict[str, str]) -> dict:
    """The GPTConfig fields written beside the weights by `save_checkpoint`."""
    try:
        config = json.loads(metadata["config"])
        if not isinstance(config, dict):
            raise ValueError(f"the config is a {type(config).__name__}, not a JSON object")
    except (KeyError, ValueError) as err:
        raise ValueError(f"checkpoint {path} has no readable model config in its metadata "
                         f"({err!r}); " + REBUILD_HINT.format(name=name)) from None
    return config


def check_checkpoint_matches(path: Path, name: str, state: dict[str, torch.Tensor],
                             expected: dict[str, tuple[int, ...]], config: dict) -> None:
    """The file holds size `name`: the same tensor names and shapes as its recipe, and the
    recipe's config; every tensor floating point and finite."""
    hint = REBUILD_HINT.format(name=name)
    for key, shape in expected.items():
        found = tuple(state[key].shape) if key in state else shape
        if found != shape:
            raise ValueError(f"checkpoint {path} is not size {name!r}: {key} has shape {found}, "
                             f"size {name!r} expects {shape} (another size's file saved under "
                             f"this name?); {hint}")
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not hold the tensors of size {name!r}: "
                         f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected "
                         f"{unexpected[:3]}; {hint}")
    recipe_config = recipe(name).config.to_dict()
    differences = {k: config.get(k) for k, v in recipe_config.items() if config.get(k) != v}
    if differences or config.keys() != recipe_config.keys():
        raise ValueError(f"checkpoint {path} was saved with config {config}, but size {name!r} "
                         f"is {recipe_config}; {hint}")
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise ValueError(f"checkpoint {path}: tensor {key} holds {tensor.dtype} numbers, "
                             f"not floating-point weights; {hint}")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"checkpoint {path}: tensor {key} holds NaN or infinite values; "
                             f"{hint}")


def checkpoint_report(name: str, directory: Path | None = None) -> dict:
    """The pretraining report stored beside the weights (loss, time, parameters)."""
    path = checkpoint_path(name, directory)
    metadata, _ = read_checkpoint(path, name, tensors=False)
    try:
        return json.loads(metadata["report"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"checkpoint {path} has no readable report in its metadata ({err!r}); "
                         + REBUILD_HINT.format(name=name)) from None


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
