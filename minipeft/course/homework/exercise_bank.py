"""The questions of every homework: one function per question, compared with minipeft's own
computation.

An `Exercise` names the function the student writes, its public case, a generator of hidden
cases (seeded random inputs of random shapes) and the `reference`: minipeft's own
computation on the same arguments. `exercises(homework)` lists a homework's questions and
`cases(homework, exercise)` draws its cases.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn


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

