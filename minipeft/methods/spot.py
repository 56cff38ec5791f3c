"""SPoT: soft prompt transfer, and learned prompts as task embeddings.

Paper: Vu, Lester, Constant, Al-Rfou & Cer (2022) "SPoT: Better Frozen Model Adaptation
through Soft Prompt Transfer" (taught in the CS 4804 lecture "Parameter-efficient
fine-tuning (PEFT)", Introduction to AI, Fall 2025). Soft prompts (see
`prompts.py`) are small, so a library of them — one per task — is cheap to keep.

Generic SPoT
    1. source prompt tuning: train a prompt P_s on one or more source tasks (their training
       examples mixed, each task in proportion to its size);
    2. target prompt tuning: start the target task's prompt from P_t := P_s and train it.

Task embeddings (targeted SPoT)
    e_t = (1/k) Σ_i P_t[i]                         the average prompt vector, (d,)
    sim(s, t) = cos(e_s, e_t) = e_s·e_t / (‖e_s‖ ‖e_t‖)              ("average")
    or the mean over all token pairs of cos(P_s[i], P_t[j])          ("per_token")
  Train a prompt on the target briefly, then transfer from the most similar source prompt.

No parameters of their own: SPoT reuses PromptTuningModel (k·d trainable numbers).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minipeft.methods.base import get_peft_model
from minipeft.methods.prompts import PromptTuningConfig, PromptTuningModel
from minipeft.model import GPT
from minipeft.train import TrainResult, random_batches, train_loop

SIMILARITIES = ("average", "per_token")
Prompt = PromptTuningModel | torch.Tensor  # a prompt model or its (k, d) prompt matrix


def train_prompt(base_model: GPT, tasks: str | list[str],
                 config: PromptTuningConfig | None = None, steps: int = 150, lr: float = 0.03,
                 batch_size: int = 16, seed: int = 0, init_from: Prompt | None = None,
                 progress: bool = False) -> tuple[PromptTuningModel, TrainResult]:
    """Prompt-tune `base_model` on the mixture of `tasks`; `seed` fixes init and batches.

    `init_from` starts from a source prompt instead (SPoT's target prompt tuning).
    The base model is only read, so many prompts can share one frozen model.
    """
    from minipeft.tasks import encode_example, load_examples
    from minipeft.tokenizer import load_tokenizer

    task_names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not task_names:
        raise ValueError("train_prompt needs at least one task name")
    tokenizer = load_tokenizer()
    pairs = [encode_example(ex, tokenizer)
             for name in task_names for ex in load_examples(name, "train")]
    torch.manual_seed(seed)  # the prompt's initialisation
    if init_from is None:
        model = get_peft_model(base_model, config or PromptTuningConfig())
    else:
        model = init_from_source(base_model, init_from, config)
    batches = random_batches(pairs, batch_size, tokenizer.eos_id, seed=seed)
    result = train_loop(model, batches, steps, lr=lr, seed=seed, progress=progress,
                        desc=f"prompt {'+'.join(task_names)}")
    return model, result


def prompt_matrix(prompt: Prompt) -> torch.Tensor:
    """The (k, d) prompt of a PromptTuningModel, or the tensor itself (checked)."""
    matrix = prompt.prompt if isinstance(prompt, PromptTuningModel) else prompt
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2:
        raise ValueError("expected a PromptTuningModel or a (k, d) prompt tensor, got "
                         f"{type(prompt).__name__}")
    return matrix.detach()


def init_from_source(base_model: GPT, source: Prompt,
                     config: PromptTuningConfig | None = None) -> PromptTuningModel:
    """A new prompt model on `base_model` whose prompt is an exact copy of `source`'s."""
    source_prompt = prompt_matrix(source)
    config = config or PromptTuningConfig(num_virtual_tokens=source_prompt.shape[0])
    target = get_peft_model(base_model, config)
    if target.prompt.shape != source_prompt.shape:
        raise ValueError(f"source prompt is {tuple(source_prompt.shape)} but the target "
                         f"prompt is {tuple(target.prompt.shape)}: use the same "
                         "num_virtual_tokens and a base model of the same width")
    with torch.no_grad():
        target.prompt.copy_(source_prompt)  # P_t := P_s, bit for bit
    return target


def task_embedding(prompt: Prompt) -> torch.Tensor:
    """e = (1/k) Σ_i P[i]: the average prompt vector, (d,)."""
    return prompt_matrix(prompt).mean(dim=0)


def task_similarity(a: Prompt, b: Prompt, method: str = "average") -> float:
    """cos(e_a, e_b) ("average") or mean_{i,j} cos(P_a[i], P_b[j]) ("per_token")."""
    if method == "average":
        return F.cosine_similarity(task_embedding(a), task_embedding(b), dim=0).item()
    if method == "per_token":
        pa, pb = F.normalize(prompt_matrix(a), dim=1), F.normalize(prompt_matrix(b), dim=1)
        return (pa @ pb.T).mean().item()  # (k_a, d) @ (d, k_b) → all pairwise cosines
    raise ValueError(f"unknown similarity {method!r}; choose one of {list(SIMILARITIES)}")


def similarity_matrix(prompts: dict[str, Prompt], method: str = "average") -> torch.Tensor:
    """S[i, j] = task_similarity(prompt i, prompt j), in the order of `prompts`: (n, n)."""
    items = list(prompts.values())
    return torch.tensor([[task_similarity(a, b, method) for b in items] for a in items])


def most_similar_source(target: Prompt, sources: dict[str, Prompt],
                        method: str = "average") -> tuple[str, float]:
    """(name, similarity) of the source prompt closest to `target` (targeted SPoT)."""
    if not sources:
        raise ValueError("no source prompts to choose from")
    scores = {name: task_similarity(target, prompt, method) for name, prompt in sources.items()}
    best = max(scores, key=scores.get)
    return best, scores[best]
