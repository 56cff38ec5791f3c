"""Homework autograding on otter-grader: student notebooks, Gradescope zips, a safe local grader.

Each homework is an otter master notebook in notebooks/homework/ (otter's assign format:
an assignment config, then per question a prompt, a solution and tests). Every question
asks the student to write one function; its two tests are one line each and call
`check_exercise(homework, question, function, "public" | "hidden")`:

* public (1 point, shown to students): one small case;
* hidden (2 points): seeded random inputs of random shapes. A function that returns a
  constant or hard-codes the public case cannot pass it.

Both compare the student's function with minipeft's own computation (the `reference` of
each `Exercise` below: a LoraLayer, `quantize_nf4`, `compute_fisher`, an IA3Layer ...).

`build` runs `otter assign` on every master notebook and writes
    DIR/<hw>/student/<hw>.ipynb                  the notebook students get (solutions out)
    DIR/<hw>/autograder/<hw>-autograder.zip      the zip Gradescope takes (with minipeft's
                                                 source, which the tests import)

`grade` does not trust the submission. Why not simply `otter run`: otter executes the
notebook and then the tests in the *same* Python kernel, with the test files on disk
beside it, and reads the scores back from a pickle that kernel writes; outside Docker it
has no time limit. A submission can therefore replace the reference the tests call,
read the tests, forge the pickle, or hang the grader. Here, per submission:

1. The trusted parent process builds every case (public and hidden) and computes the
   expected values with minipeft *in its own process*, which never runs student code. So
   monkeypatching minipeft inside the submission changes nothing the grader compares with.
2. The submission runs in a child process (its own session, `python -m
   minipeft.course.homework --child`) in a fresh temporary directory that holds only a
   copy of the notebook (and whose parent holds only that directory): no test, no expected
   value is on disk there. The child receives
   the case *inputs* on stdin before any student code runs, executes the code cells one by
   one (an exception, `sys.exit` included, fails only its cell), and at each
   `grader.check("qN")` (and at the end for questions not checked yet) calls the student's
   function on the inputs and streams its outputs back as JSON, one line per question.
   Only the outputs cross back; no pickle is ever loaded from the child.
3. Wall-clock limit (default 120 s): the parent kills the child's whole process group when
   it expires. Questions whose outputs arrived before keep their points; the rest score 0
   with "time limit exceeded". `os._exit`, a crash or a killed child are handled the same
   way ("the submission ended before this question was graded").
4. Output cap: the child's file descriptors 1 and 2 point to /dev/null and Python's
   sys.stdout / sys.stderr keep only the first `OUTPUT_CAP` characters of what the
   submission prints; the parent also stops reading after `RESULTS_CAP` bytes.
5. Each submission's notebook is read into memory before any child starts, and each child
   has its own directory, so with --jobs N one submission cannot change another's input.

Inside a student's own notebook (`grader.check`, and on Gradescope, where otter runs the
tests in the student's kernel) `check_exercise` computes the reference from a private,
freshly imported copy of minipeft, so replacing `minipeft.methods.qlora.nf4_levels_from_quantiles` (say)
in the notebook does not change it either; the strict guarantee is the local grader's.

Not defended against: a submission that calls minipeft's own function instead of writing
it (the course library is installed for students), and a submission that attacks the
machine (the child runs as the same user; use a container for untrusted classes at scale).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from minipeft.files import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
MASTER_DIR = REPO / "notebooks" / "homework"
DEFAULT_OUT = REPO / "build" / "homework"
DEFAULT_TIMEOUT = 120.0
OUTPUT_CAP = 20_000  # characters of a submission's printing kept for its results.json
RESULTS_CAP = 50_000_000  # bytes the parent reads from one child before killing it
PUBLIC_POINTS, HIDDEN_POINTS = 1, 2


# ======================================================================================
# Exercises: one function per question, compared with minipeft's own computation
# ======================================================================================
@dataclass(frozen=True)
class TinyGPT:
    """A small minipeft GPT with N(0, 1) weights, sent to the child as (config, seed)."""

    config: dict
    seed: int

    def build(self):
        from minipeft.model import GPT, GPTConfig

        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            model = GPT(GPTConfig(**self.config))
            with torch.no_grad():  # N(0, 1) weights: gradients far above rounding noise
                for p in model.parameters():
                    p.normal_()
        return model.eval()


@dataclass(frozen=True)
class Exercise:
    """A question: the student writes `function`; it must agree with `reference`.

    public():    the arguments of the one small case shown to students;
    hidden(g):   a list of argument tuples drawn with the torch.Generator g (random shapes);
    reference:   minipeft's own computation on the same arguments;
    rtol, atol:  tolerances for floating-point results (integers and booleans are exact).
    """

    question: str
    function: str
    public: Callable[[], tuple]
    hidden: Callable[[torch.Generator], list[tuple]]
    reference: Callable[..., Any]
    rtol: float = 1e-4
    atol: float = 1e-5


def randint(g: torch.Generator, low: int, high: int) -> int:
    """A random integer in [low, high] (both included)."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


# ---- homework 1: rank and SVD ---------------------------------------------------------
def lora_layer(W0: torch.Tensor, b: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor,
               alpha: float, r: int):
    """minipeft's LoraLayer around nn.Linear(W0, b) with adapter factors A, B."""
    from minipeft.methods.lora import LoraConfig, LoraLayer

    d, k = W0.shape
    linear = nn.Linear(k, d, bias=b is not None)
    with torch.no_grad():
        linear.weight.copy_(W0)
        if b is not None:
            linear.bias.copy_(b)
    layer = LoraLayer(linear)
    layer.add_adapter("default", LoraConfig(r=r, alpha=alpha))
    layer.set_adapter("default")
    with torch.no_grad():
        layer.lora_A["default"].copy_(A)
        layer.lora_B["default"].copy_(B)
    return layer


def ref_lora_param_count(d_out: int, d_in: int, r: int) -> int:
    layer = lora_layer(torch.zeros(d_out, d_in), None, torch.zeros(r, d_in),
                       torch.zeros(d_out, r), alpha=1.0, r=r)
    return sum(p.numel() for p in layer.adapter_tensors("default").values())


def ref_lora_forward(x, W0, b, A, B, alpha, r):
    with torch.no_grad():
        return lora_layer(W0, b, A, B, alpha, r)(x)


def ref_best_rank_k(W, k):
    from minipeft.analysis import singular_values

    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    W_k = (U[:, :k] * S[:k]) @ Vh[:k]  # Σ_{i≤k} σᵢ uᵢ vᵢᵀ
    error = float(singular_values(W)[k:].pow(2).sum().sqrt())  # Eckart–Young: √(Σ_{i>k} σᵢ²)
    return W_k.to(W.dtype), error


def ref_merge_lora(W0, A, B, alpha, r):
    layer = lora_layer(W0, None, A, B, alpha, r)
    layer.merge()
    return layer.base_layer.weight.detach().clone()


def ref_effective_rank(W):
    from minipeft.analysis import effective_rank

    return effective_rank(W)


def lora_case(g: torch.Generator) -> tuple:
    n, k, d = randint(g, 1, 6), randint(g, 2, 24), randint(g, 2, 24)
    r = randint(g, 1, min(d, k))
    alpha = float(randint(g, 1, 32))
    return (randn(g, n, k), randn(g, d, k), randn(g, d), randn(g, r, k), randn(g, d, r),
            alpha, r)


def merge_case(g: torch.Generator) -> tuple:
    x, W0, b, A, B, alpha, r = lora_case(g)
    return W0, A, B, alpha, r


def low_rank_matrix(g: torch.Generator) -> torch.Tensor:
    """A random matrix of random shape whose rank is at most a random number."""
    m, n = randint(g, 2, 30), randint(g, 2, 30)
    rank = randint(g, 1, min(m, n))
    return randn(g, m, rank) @ randn(g, rank, n)


HW1 = [
    Exercise("q1", "lora_param_count", lambda: (512, 64, 8),
             lambda g: [(randint(g, 1, 4096), randint(g, 1, 4096), randint(g, 1, 64))
                        for _ in range(6)],
             ref_lora_param_count),
    Exercise("q2", "lora_forward",
             lambda: (torch.tensor([[1.0, 2.0, -1.0]]), torch.eye(2, 3), torch.tensor([0.5, -0.5]),
                      torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
                      torch.tensor([[1.0, 2.0], [0.0, -1.0]]), 4.0, 2),
             lambda g: [lora_case(g) for _ in range(5)], ref_lora_forward),
    Exercise("q3", "best_rank_k",
             lambda: (torch.diag(torch.tensor([3.0, 2.0, 1.0])), 1),
             lambda g: [(W, randint(g, 1, min(W.shape))) for W in
                        (randn(g, randint(g, 2, 30), randint(g, 2, 30)) for _ in range(5))],
             ref_best_rank_k),
    # The public case is square with a symmetric ΔW (B = Aᵀ), so it cannot tell ΔW from
    # ΔWᵀ; the hidden cases are rectangular.
    Exercise("q4", "merge_lora",
             lambda: (torch.eye(2), torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0], [2.0]]),
                      2.0, 1),
             lambda g: [merge_case(g) for _ in range(5)], ref_merge_lora),
    Exercise("q5", "effective_rank",
             lambda: (torch.diag(torch.tensor([1.0, 1.0, 0.0])),),
             lambda g: [(low_rank_matrix(g),) for _ in range(5)], ref_effective_rank),
]


# ---- homework 2: quantization ---------------------------------------------------------
def ref_int8_centred(c):
    from minipeft.methods.qlora import double_quantize

    # QLoRA's second level with the int8 code book k/127: its codes index the 255 levels,
    # so index i is the integer k = i − 127 that the exercise asks for.
    index, scales, mean = double_quantize(c, block_size=c.numel(), code="int8")
    return (index.long() - 127).to(torch.int8), scales[0], mean


def ref_nf4_levels():
    from minipeft.methods.qlora import nf4_levels_from_quantiles

    return nf4_levels_from_quantiles()


def ref_nf4_roundtrip(w):
    from minipeft.methods.qlora import dequantize_nf4, quantize_nf4, unpack_4bit

    packed, absmax = quantize_nf4(w, block_size=w.numel())
    w_hat = dequantize_nf4(packed, absmax, tuple(w.shape), block_size=w.numel())
    return unpack_4bit(packed), absmax[0], w_hat


def ref_bits_per_parameter(block_size, double_quant, double_quant_block_size):
    from minipeft.methods.qlora import bits_per_parameter_formula

    return bits_per_parameter_formula(block_size, double_quant, double_quant_block_size)


def nf4_block(g: torch.Generator) -> tuple:
    n = 2 ** randint(g, 3, 7)  # 8 ... 128 weights
    return (randn(g, n) * float(torch.rand(1, generator=g) * 0.1 + 1e-3),)


HW2 = [
    Exercise("q1", "int8_quantize_centred",
             lambda: (torch.tensor([0.5, 1.0, 1.5, 3.0]),),
             lambda g: [(torch.rand(randint(g, 2, 300), generator=g) * 0.05,) for _ in range(5)],
             ref_int8_centred),
    Exercise("q2", "nf4_levels", lambda: (), lambda g: [()], ref_nf4_levels, atol=1e-6),
    Exercise("q3", "nf4_roundtrip",
             lambda: (torch.tensor([0.0, 1.0, -0.5, 0.25, -2.0, 0.1, 0.7, -0.05]),),
             lambda g: [nf4_block(g) for _ in range(5)], ref_nf4_roundtrip),
    Exercise("q4", "bits_per_parameter",
             lambda: (64, True, 256),
             lambda g: [(2 ** randint(g, 4, 10), bool(randint(g, 0, 1)), 2 ** randint(g, 5, 10))
                        for _ in range(6)],
             ref_bits_per_parameter),
]


# ---- homework 3: Fisher information and selective fine-tuning -------------------------
@dataclass
class Example:
    """What minipeft's task examples look like to compute_fisher: a prompt and its answer."""

    prompt: str
    answer: str


class SpaceSeparatedIds:
    """A tokenizer for token ids written as text: encode("3 5 7") = [3, 5, 7]."""

    @staticmethod
    def encode(text: str) -> list[int]:
        return [int(t) for t in text.split()]


def ref_empirical_fisher(model, prompts, answers):
    from minipeft.methods.masks import compute_fisher

    examples = [Example(" ".join(map(str, p)), " ".join(map(str, a)))
                for p, a in zip(prompts, answers)]
    return compute_fisher(model, examples, SpaceSeparatedIds(), n_samples=len(examples),
                          labels="gold")


def ref_top_k_mask(scores, k):
    from minipeft.methods.masks import select_largest

    chosen = torch.zeros(sum(s.numel() for s in scores.values()), dtype=torch.bool)
    chosen[select_largest(scores, k)] = True
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = chosen[start:start + s.numel()].view_as(s)
        start += s.numel()
    return masks


def ref_bitfit_count(n_layer, d_model, d_ff):
    from minipeft.methods import BitFitConfig, get_peft_model
    from minipeft.model import GPT, GPTConfig

    gpt = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=n_layer, n_head=1,
                        d_model=d_model, d_ff=d_ff))
    return get_peft_model(gpt, BitFitConfig()).count_parameters()[0]


def ref_bias_gradients(gpt, idx, targets):
    names = [f"blocks.{i}.attn.{m}.bias" for m in ("q", "k") for i in range(len(gpt.blocks))]
    params = [gpt.get_parameter(n) for n in names]
    grads = torch.autograd.grad(gpt(idx, targets).loss, params)
    n = len(gpt.blocks)
    return torch.stack(grads[:n]), torch.stack(grads[n:])  # (L, d) each: b_q, then b_k


def tiny_gpt(g: torch.Generator, vocab_size: int = 12) -> TinyGPT:
    n_head = randint(g, 1, 2)
    config = {"vocab_size": vocab_size, "block_size": 16, "n_layer": randint(g, 1, 2),
              "n_head": n_head, "d_model": 4 * n_head * randint(g, 1, 2)}
    return TinyGPT(config, randint(g, 0, 10_000))


def fisher_case(g: torch.Generator) -> tuple:
    model = tiny_gpt(g)
    n = randint(g, 1, 3)
    prompts = [torch.randint(12, (randint(g, 1, 4),), generator=g).tolist() for _ in range(n)]
    answers = [torch.randint(12, (randint(g, 1, 3),), generator=g).tolist() for _ in range(n)]
    return model, prompts, answers


def gradient_case(g: torch.Generator) -> tuple:
    model = tiny_gpt(g)
    B, T = randint(g, 1, 3), randint(g, 2, 8)
    return (model, torch.randint(12, (B, T), generator=g),
            torch.randint(12, (B, T), generator=g))


def score_case(g: torch.Generator) -> tuple:
    scores = {f"layer{i}.weight": torch.rand(randint(g, 1, 6), randint(g, 1, 6), generator=g)
              for i in range(randint(g, 1, 4))}
    return scores, randint(g, 1, sum(s.numel() for s in scores.values()))


HW3 = [
    Exercise("q1", "empirical_fisher",
             lambda: (TinyGPT({"vocab_size": 12, "block_size": 16, "n_layer": 1, "n_head": 1,
                               "d_model": 4}, 0), [[1, 2, 3]], [[4]]),
             lambda g: [fisher_case(g) for _ in range(3)], ref_empirical_fisher,
             rtol=1e-3, atol=1e-7),
    Exercise("q2", "top_k_mask",
             lambda: ({"a": torch.tensor([0.1, 0.9, 0.3]), "b": torch.tensor([[0.5, 0.2]])}, 2),
             lambda g: [score_case(g) for _ in range(5)], ref_top_k_mask),
    Exercise("q3", "bitfit_count", lambda: (4, 128, 512),
             lambda g: [(randint(g, 1, 6), 8 * randint(g, 1, 16), 8 * randint(g, 1, 64))
                        for _ in range(4)],
             ref_bitfit_count),
    Exercise("q4", "bias_gradients",
             lambda: (TinyGPT({"vocab_size": 12, "block_size": 16, "n_layer": 1, "n_head": 1,
                               "d_model": 4}, 0), torch.tensor([[1, 2, 3]]),
                      torch.tensor([[2, 3, 4]])),
             lambda g: [gradient_case(g) for _ in range(4)], ref_bias_gradients,
             rtol=1e-3, atol=1e-6),
]


# ---- homework 4: soft prompts and adapters ---------------------------------------------
def ref_soft_prompt_inputs(prompt, idx, embedding):
    """[P; E(x)] as PromptTuningModel hands it to the frozen GPT (captured by a hook)."""
    from minipeft.methods import PromptTuningConfig, get_peft_model
    from minipeft.model import GPT, GPTConfig

    V, d = embedding.shape
    k = prompt.shape[0]
    gpt = GPT(GPTConfig(vocab_size=V, block_size=k + idx.shape[1], n_layer=1, n_head=1,
                        d_model=d))
    with torch.no_grad():
        gpt.tok_emb.weight.copy_(embedding)
    model = get_peft_model(gpt, PromptTuningConfig(num_virtual_tokens=k, init="random"))
    with torch.no_grad():
        model.prompt.copy_(prompt)
    captured = {}

    def capture(module, args, kwargs):
        captured["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = gpt.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(idx)
    handle.remove()
    return captured["inputs_embeds"]


class IdsAsText:
    @staticmethod
    def token_text(i: int) -> str:
        return str(i)


class EmbeddingOnly(nn.Module):
    """Just enough of a GPT for analysis.nearest_tokens: a token embedding E."""

    def __init__(self, embedding: torch.Tensor):
        super().__init__()
        self.tok_emb = nn.Embedding.from_pretrained(embedding)


def ref_nearest_token_ids(vectors, embedding, k):
    from minipeft.analysis import nearest_tokens

    found = nearest_tokens(vectors, EmbeddingOnly(embedding), IdsAsText(), k)
    return torch.tensor([[int(text) for text, _ in row] for row in found])


def ref_adapter_forward(h, W_down, b_down, W_up, b_up, scale):
    from minipeft.methods.adapters import SequentialAdapter

    d, m = h.shape[-1], W_down.shape[0]
    adapter = SequentialAdapter(nn.Identity(), d, m, "relu", scale)
    with torch.no_grad():
        for linear, W, b in ((adapter.adapter.down, W_down, b_down),
                             (adapter.adapter.up, W_up, b_up)):
            linear.weight.copy_(W)
            linear.bias.copy_(b)
        return adapter(h)


def ref_ia3_merge(W, b, l):
    from minipeft.methods.ia3 import IA3Layer

    d, k = W.shape
    linear = nn.Linear(k, d)
    with torch.no_grad():
        linear.weight.copy_(W)
        linear.bias.copy_(b)
    layer = IA3Layer(linear, scales_input=False)
    with torch.no_grad():
        layer.ia3_l.copy_(l)
    layer.merge()
    return linear.weight.detach().clone(), linear.bias.detach().clone()


def prompt_case(g: torch.Generator) -> tuple:
    V, d, k = randint(g, 3, 20), randint(g, 1, 8), randint(g, 1, 5)
    B, T = randint(g, 1, 3), randint(g, 1, 6)
    return randn(g, k, d), torch.randint(V, (B, T), generator=g), randn(g, V, d)


def nearest_case(g: torch.Generator) -> tuple:
    V, d = randint(g, 2, 40), randint(g, 2, 8)
    return randn(g, randint(g, 1, 5), d), randn(g, V, d), randint(g, 1, V)


def adapter_case(g: torch.Generator) -> tuple:
    d, m = randint(g, 2, 16), randint(g, 1, 4)
    h = randn(g, randint(g, 1, 3), randint(g, 1, 4), d)
    return (h, randn(g, m, d), randn(g, m), randn(g, d, m), randn(g, d),
            float(randint(g, 1, 8)) / 2)


def ia3_case(g: torch.Generator) -> tuple:
    d, k = randint(g, 1, 12), randint(g, 1, 12)
    return randn(g, d, k), randn(g, d), randn(g, d)


HW4 = [
    Exercise("q1", "soft_prompt_inputs",
             lambda: (torch.tensor([[9.0, 9.0]]), torch.tensor([[0, 2]]),
                      torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])),
             lambda g: [prompt_case(g) for _ in range(5)], ref_soft_prompt_inputs),
    Exercise("q2", "nearest_token_ids",
             lambda: (torch.tensor([[1.0, 0.1]]),
                      torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]]), 2),
             lambda g: [nearest_case(g) for _ in range(5)], ref_nearest_token_ids),
    Exercise("q3", "adapter_forward",
             lambda: (torch.tensor([[[1.0, -1.0]]]), torch.tensor([[1.0, 0.0]]),
                      torch.tensor([0.0]), torch.tensor([[1.0], [2.0]]), torch.tensor([0.5, 0.0]),
                      1.0),
             lambda g: [adapter_case(g) for _ in range(5)], ref_adapter_forward),
    Exercise("q4", "ia3_merge",
             lambda: (torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1.0, -1.0]),
                      torch.tensor([2.0, 0.5])),
             lambda g: [ia3_case(g) for _ in range(5)], ref_ia3_merge),
]

HOMEWORKS: dict[str, list[Exercise]] = {
    "hw1_rank_svd": HW1,
    "hw2_quantization": HW2,
    "hw3_selective": HW3,
    "hw4_prompts_adapters": HW4,
}


def exercises(homework: str) -> dict[str, Exercise]:
    if homework not in HOMEWORKS:
        raise ValueError(f"unknown homework {homework!r}; choose one of {sorted(HOMEWORKS)}")
    return {e.question: e for e in HOMEWORKS[homework]}


def cases(homework: str, exercise: Exercise) -> list[tuple]:
    """[public case, hidden case 1, ...]; the hidden ones seeded by homework and question."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{homework}/{exercise.question}".encode()))
    return [exercise.public(), *exercise.hidden(generator)]


# ======================================================================================
# Values as JSON (tensors, tuples, tiny models) and the comparison of results
# ======================================================================================
def to_json(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {"__tensor__": str(value.dtype).removeprefix("torch."), "shape": list(value.shape),
                "data": value.detach().cpu().reshape(-1).tolist()}
    if isinstance(value, TinyGPT):
        return {"__gpt__": value.config, "seed": value.seed}
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v) for v in value]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("dictionary keys must be strings")
        return {"__dict__": {k: to_json(v) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot compare a value of type {type(value).__name__}")


def from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        dtype = getattr(torch, value["__tensor__"])
        return torch.tensor(value["data"], dtype=dtype).reshape(value["shape"])
    if "__gpt__" in value:
        return TinyGPT(value["__gpt__"], value["seed"])
    if "__tuple__" in value:
        return tuple(from_json(v) for v in value["__tuple__"])
    return {k: from_json(v) for k, v in value["__dict__"].items()}


def as_scalar(value: Any) -> float | None:
    """A Python number or a one-element tensor as a float; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() <= 1:
        return float(value)
    return None


def compare(expected: Any, got: Any, rtol: float, atol: float, where: str = "result") -> str:
    """'' if `got` matches `expected`, else one sentence saying where and how it differs.

    Tensors must match in shape and dtype, then in value (floating point within rtol/atol,
    integers and booleans exactly). A number may come as a Python number or a 0-dim tensor.
    """
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            return f"{where}: expected a dict with keys {sorted(expected)}, got {describe(got)}"
        problems = (compare(expected[k], got[k], rtol, atol, f"{where}[{k!r}]") for k in expected)
        return next((p for p in problems if p), "")
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"{where}: expected a tuple of {len(expected)} values, got {describe(got)}"
        problems = (compare(e, g, rtol, atol, f"{where}[{i}]")
                    for i, (e, g) in enumerate(zip(expected, got)))
        return next((p for p in problems if p), "")
    if isinstance(expected, torch.Tensor) and expected.dim() > 0:
        return compare_tensors(expected, got, rtol, atol, where)
    value = as_scalar(got)
    if value is None:
        return f"{where}: expected the number {as_scalar(expected):.6g}, got {describe(got)}"
    if isinstance(expected, int):
        return "" if value == expected else f"{where}: expected {expected}, got {value:g}"
    if not math.isclose(value, as_scalar(expected), rel_tol=rtol, abs_tol=atol):
        return f"{where}: expected {as_scalar(expected):.6g}, got {value:.6g}"
    return ""


def compare_tensors(expected: torch.Tensor, got: Any, rtol: float, atol: float,
                    where: str) -> str:
    if not isinstance(got, torch.Tensor):
        return f"{where}: expected a tensor, got {describe(got)}"
    if got.shape != expected.shape:
        return f"{where}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if got.dtype != expected.dtype:
        return f"{where}: expected dtype {expected.dtype}, got {got.dtype}"
    if expected.is_floating_point():
        close = torch.allclose(got.double(), expected.double(), rtol=rtol, atol=atol)
    else:
        close = torch.equal(got, expected)
    if not close:
        diff = (got.double() - expected.double()).abs().max()
        return f"{where}: values differ (largest difference {float(diff):.3g})"
    return ""


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} values"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    return f"{type(value).__name__} {value!r}"[:200]


def call_with(function: Callable, arguments: tuple) -> Any:
    """Call `function` on a private copy of the arguments (it may change them in place)."""
    args = from_json(to_json(arguments))
    args = [a.build() if isinstance(a, TinyGPT) else a for a in args]
    return function(*args)


# ======================================================================================
# Checking inside a notebook (grader.check, otter on Gradescope)
# ======================================================================================
@contextlib.contextmanager
def fresh_homework_module():
    """A private copy of this module and of minipeft, imported afresh from the source files.

    While the block runs, sys.modules holds fresh copies of every minipeft module (so the
    references' imports find them, not the ones the notebook may have changed); afterwards
    the notebook's own modules are put back.
    """
    def ours(name: str) -> bool:
        return name == "minipeft" or name.startswith("minipeft.")

    saved = {n: m for n, m in sys.modules.items() if ours(n)}
    for name in saved:
        del sys.modules[name]
    try:
        yield importlib.import_module("minipeft.course.homework")
    finally:
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


def check_exercise(homework: str, question: str, function: Callable, which: str) -> None:
    """The notebook test: raise AssertionError unless `function` agrees with minipeft.

    which: "public" (the one small case) or "hidden" (seeded random cases).
    """
    with fresh_homework_module() as fresh:
        exercise = fresh.exercises(homework)[question]
        all_cases = fresh.cases(homework, exercise)
        chosen = all_cases[:1] if which == "public" else all_cases[1:]
        for n, arguments in enumerate(chosen):
            expected = fresh.call_with(exercise.reference, arguments)
            got = fresh.call_with(function, arguments)
            problem = fresh.compare(expected, got, exercise.rtol, exercise.atol)
            assert not problem, f"{which} case {n + 1} of {exercise.function}: {problem}"


# ======================================================================================
# The child: runs one submission, streams each question's outputs to the parent
# ======================================================================================
class CappedText(io.TextIOBase):
    """sys.stdout / sys.stderr for the submission: keeps the first `cap` characters."""

    def __init__(self, cap: int):
        self.cap, self.parts, self.kept, self.dropped = cap, [], 0, 0

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        text = str(text)
        room = self.cap - self.kept
        if room > 0:
            self.parts.append(text[:room])
            self.kept += min(room, len(text))
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def take(self) -> str:
        """Everything kept since the last take(), with a note of what was cut."""
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n[... {self.dropped} more characters of output cut]"
        self.parts, self.dropped = [], 0
        return text


class StubGrader:
    """Stands in for otter's Notebook in the child: check("qN") grades question qN now."""

    def __init__(self, on_check: Callable[[str], None], on_check_all: Callable[[], None]):
        self.check, self._check_all = on_check, on_check_all

    def check_all(self):
        self._check_all()

    def export(self, *args, **kwargs):
        return None

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def notebook_code_cells(notebook: dict) -> list[str]:
    """Source of every code cell; IPython magics and shell lines are commented out."""
    sources = []
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        sources.append(re.sub(r"^(\s*)([%!])", r"\1# \2", source, flags=re.M))
    return sources


def child_main() -> None:
    """Entry point of the grading child (`python -m minipeft.course.homework --child`)."""
    job = json.loads(sys.stdin.read())  # the inputs, read before any student code runs
    channel = os.dup(1)  # private copy of the pipe to the parent
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    printed = CappedText(job["output_cap"])
    sys.stdout = sys.stderr = printed
    torch.set_num_threads(1)
    limit = job["file_size_limit"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    questions = job["questions"]
    done: set[str] = set()

    def send(message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(channel, data):]

    def grade(question: str) -> None:
        if question not in questions or question in done:
            return
        done.add(question)
        spec = questions[question]
        function = namespace.get(spec["function"])
        outputs = []
        for arguments in spec["cases"]:
            try:
                if not callable(function):
                    raise NameError(f"no function named {spec['function']} is defined")
                outputs.append({"value": to_json(call_with(function, from_json(arguments)))})
            except BaseException as error:  # sys.exit inside the function fails this case only
                outputs.append({"error": f"{type(error).__name__}: {error}"[:500]})
        send({"question": question, "outputs": outputs, "printed": printed.take()})

    def grade_all() -> None:
        for question in questions:
            grade(question)

    fake_otter = type(sys)("otter")
    fake_otter.Notebook = lambda *args, **kwargs: StubGrader(grade, grade_all)
    sys.modules["otter"] = fake_otter
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for n, source in enumerate(notebook_code_cells(job["notebook"])):
        try:
            exec(compile(source, f"<cell {n + 1}>", "exec"), namespace)
        except BaseException:  # a failing cell (SystemExit too) does not stop the others
            printed.write(traceback.format_exc(limit=3))
    grade_all()
    send({"finished": True, "printed": printed.take()})


# ======================================================================================
# The parent: one child per submission, results.json and summary.csv
# ======================================================================================
@dataclass
class ChildRun:
    messages: list[dict]
    status: str  # "ok", "time limit exceeded (120 s)", "ended early (exit code 1)", ...


def run_child(notebook: dict, questions: dict, timeout: float) -> ChildRun:
    """Run one submission in its own process group and directory; kill it at `timeout`."""
    job = json.dumps({"notebook": notebook, "questions": questions, "output_cap": OUTPUT_CAP,
                      "file_size_limit": 100_000_000})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
    with tempfile.TemporaryDirectory(prefix="minipeft-grade-") as private:
        workdir = Path(private, "submission")  # its parent holds nothing else either
        workdir.mkdir()
        (workdir / "submission.ipynb").write_text(json.dumps(notebook))
        process = subprocess.Popen([sys.executable, "-m", "minipeft.course.homework", "--child"],
                                   cwd=workdir, env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        lines: list[bytes] = []
        overflow = threading.Event()
        reader = threading.Thread(target=read_capped, args=(process.stdout, lines, overflow),
                                  daemon=True)
        reader.start()
        started = time.monotonic()
        try:
            process.stdin.write(job.encode())
            process.stdin.close()
        except BrokenPipeError:
            pass
        status = "ok"
        while process.poll() is None:
            if overflow.is_set():
                status = "stopped: the submission sent more than the results cap"
                break
            if time.monotonic() - started > timeout:
                status = f"time limit exceeded ({timeout:g} s)"
                break
            time.sleep(0.05)
        kill_group(process)
        reader.join(timeout=5)
    messages = []
    for line in lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue  # not one of the child's lines
        if isinstance(message, dict):
            messages.append(message)
    if status == "ok" and not any(m.get("finished") for m in messages):
        status = f"ended early (exit code {process.returncode})"
    return ChildRun(messages, status)


def read_capped(stream, lines: list[bytes], overflow: threading.Event) -> None:
    total = 0
    for line in stream:
        total += len(line)
        if total > RESULTS_CAP:
            overflow.set()
            return
        lines.append(line)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the child and anything it started (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def expected_values(homework: str) -> dict[str, tuple[list, list]]:
    """{question: (case inputs, expected outputs)}, computed here, never in a child."""
    table = {}
    for question, exercise in exercises(homework).items():
        inputs = cases(homework, exercise)
        table[question] = (inputs, [call_with(exercise.reference, args) for args in inputs])
    return table


def score_submission(homework: str, run: ChildRun, table: dict) -> dict:
    """Gradescope's results.json for one submission."""
    graded = {m["question"]: m for m in run.messages if "question" in m}
    tests, printed = [], "".join(m.get("printed", "") for m in run.messages)
    for question, exercise in exercises(homework).items():
        _, expected = table[question]
        message = graded.get(question)
        for which, points, chosen in (("public", PUBLIC_POINTS, [0]),
                                      ("hidden", HIDDEN_POINTS, range(1, len(expected)))):
            if message is None:
                problem = ("time limit exceeded before this question was graded"
                           if run.status.startswith("time") else
                           f"the submission ended before this question was graded ({run.status})")
            else:
                problem = first_problem(exercise, message["outputs"], expected, chosen)
            tests.append({"name": f"{question} {exercise.function} ({which})",
                          "score": 0 if problem else points, "max_score": points,
                          "visibility": "visible" if which == "public" else "hidden",
                          "output": problem or "passed"})
    return {"score": sum(t["score"] for t in tests), "tests": tests,
            "output": f"status: {run.status}\n{printed}"}


def first_problem(exercise: Exercise, outputs: list, expected: list, chosen) -> str:
    if not isinstance(outputs, list) or len(outputs) != len(expected):
        return "the submission sent no complete set of results"
    for n, i in enumerate(chosen):
        output = outputs[i] if isinstance(outputs[i], dict) else {}
        if "value" not in output:
            return f"case {n + 1}: {str(output.get('error', 'no result'))[:500]}"
        try:
            got = from_json(output["value"])
        except Exception as error:
            return f"case {n + 1}: unreadable result ({type(error).__name__})"
        problem = compare(expected[i], got, exercise.rtol, exercise.atol)
        if problem:
            return f"case {n + 1}: {problem}"
    return ""


def grade(homework: str, submissions: list[str | Path], out: str | Path = DEFAULT_OUT / "grades",
          timeout: float = DEFAULT_TIMEOUT, jobs: int = 1, progress: bool = True) -> list[dict]:
    """Grade notebooks; write OUT/<stem>/results.json and OUT/summary.csv. Returns the results."""
    from tqdm import tqdm

    table = expected_values(homework)
    paths = [Path(s) for s in submissions]
    notebooks = [read_submission(p) for p in paths]  # all read before any submission runs
    stems = [p.stem for p in paths]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ValueError(f"submissions {repeated} share a file name; results are written to "
                         "OUT/<file name>/, so rename them apart")
    if jobs < 1 or timeout <= 0:
        raise ValueError(f"--jobs must be ≥ 1 and --timeout > 0, got {jobs} and {timeout}")
    questions = {q: {"function": exercises(homework)[q].function,
                     "cases": [to_json(args) for args in inputs]}
                 for q, (inputs, _) in table.items()}

    def one(notebook: dict | str) -> dict:
        if isinstance(notebook, str):  # unreadable: the reason
            return {"score": 0, "tests": [], "output": f"status: {notebook}"}
        return score_submission(homework, run_child(notebook, questions, timeout), table)

    out = Path(out)
    results = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for stem, result in tqdm(zip(stems, pool.map(one, notebooks)), total=len(paths),
                                 desc=f"grading {homework}", unit="submission",
                                 disable=not progress):
            atomic_write_text(out / stem / "results.json", json.dumps(result, indent=1))
            results.append(result)
    write_summary(out / "summary.csv", stems, results, list(table))
    return results


def read_submission(path: Path) -> dict | str:
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"not a readable notebook ({type(error).__name__}: {error})"
    return notebook if isinstance(notebook, dict) else "not a notebook"


def write_summary(path: Path, stems: list[str], results: list[dict], questions: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["submission", "total", *questions, "status"])
    for stem, result in zip(stems, results):
        per_question = {q: 0 for q in questions}
        for test in result["tests"]:
            per_question[test["name"].split()[0]] += test["score"]
        status = result["output"].splitlines()[0].removeprefix("status: ")
        writer.writerow([stem, result["score"], *(per_question[q] for q in questions), status])
    atomic_write_text(path, buffer.getvalue())


# ======================================================================================
# Building student notebooks and autograder zips with otter assign
# ======================================================================================
def master_notebooks() -> list[Path]:
    return sorted(MASTER_DIR.glob("hw*.ipynb"))


def build(out: str | Path = DEFAULT_OUT, homeworks: list[str] | None = None) -> list[Path]:
    """otter assign on the master notebooks (default all) → OUT/<hw>/student/<hw>.ipynb and
    OUT/<hw>/autograder/<hw>-autograder.zip."""
    out = Path(out)
    masters = master_notebooks()
    if homeworks is not None:
        for hw in homeworks:
            exercises(hw)  # a clear error for an unknown name
        masters = [m for m in masters if m.stem in homeworks]
    written = []
    for master in masters:
        hw = master.stem
        with tempfile.TemporaryDirectory(prefix="minipeft-assign-") as tmp:
            result = subprocess.run(
                [sys.executable, "-m", "otter", "assign", "--no-run-tests", "--no-pdfs",
                 str(master), tmp], capture_output=True, text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)})
            if result.returncode != 0:
                raise RuntimeError(f"otter assign failed on {master}:\n{result.stderr[-2000:]}")
            student = Path(tmp, "student", master.name)
            [zip_path] = Path(tmp, "autograder").glob("*.zip")
            target = out / hw
            atomic_write_text(target / "student" / f"{hw}.ipynb", student.read_text())
            written.append(target / "student" / f"{hw}.ipynb")
            written.append(add_minipeft(zip_path, target / "autograder" / f"{hw}-autograder.zip"))
    return written


def add_minipeft(zip_path: Path, target: Path) -> Path:
    """Copy otter's zip and add minipeft's source under files/ (otter puts files/ beside the
    submission on Gradescope, so the tests' `import minipeft` finds it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(zip_path) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for item in source.infolist():
            z.writestr(item, source.read(item))
        for path in sorted((REPO / "minipeft").rglob("*.py")):
            z.write(path, f"files/{path.relative_to(REPO).as_posix()}")
    os.replace(tmp, target)
    return target


def run_command(args: argparse.Namespace) -> None:
    if args.homework_command == "build":
        for path in build(args.out, args.homework):
            print("wrote", path)
        return
    results = grade(args.homework, args.submissions, args.out, args.timeout, args.jobs)
    print(f"graded {len(results)} submission(s); summary in {Path(args.out) / 'summary.csv'}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--child"]:
        sys.exit("this module is run by the grader as `--child`; use `python -m minipeft "
                 "homework build|grade`")
    child_main()
