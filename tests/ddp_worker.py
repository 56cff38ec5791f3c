"""Train two tiny models the way test_distributed.py compares them, in one or several processes.

    python tests/ddp_worker.py OUT                                    # one process
    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT

Each rank writes OUT/<case>.rank<r>.pt: its trained tensors and its loss curve.
Cases: "finetune" (LoRA, answer-only targets of uneven length, so the ranks hold different
numbers of target tokens) and "pretrain" (every tensor trains on language-model windows,
weight decay on every tensor, as the pretraining recipe).
"""
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from minipeft.methods import LoraConfig, get_peft_model
from minipeft.model import GPT, GPTConfig
from minipeft.train import lm_windows, random_batches, train_loop

CONFIG = GPTConfig(vocab_size=40, block_size=24, n_layer=2, n_head=2, d_model=16)
STEPS, BATCH = 6, 8


def uneven_pairs(n: int = 64) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) with prompts of 3-8 tokens and answers of 1-6: the loss counts
    only the answer positions, so two halves of a batch rarely hold as many targets."""
    generator = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(n):
        prompt_length = int(torch.randint(3, 9, (1,), generator=generator))
        answer_length = int(torch.randint(1, 7, (1,), generator=generator))
        sequence = torch.randint(CONFIG.vocab_size, (prompt_length + answer_length + 1,),
                                 generator=generator).tolist()
        targets = [-100] * (prompt_length - 1) + sequence[prompt_length:]
        pairs.append((sequence[:-1], targets))
    return pairs


def finetune() -> tuple[dict[str, torch.Tensor], list[float]]:
    torch.manual_seed(0)
    model = get_peft_model(GPT(CONFIG), LoraConfig(r=2, alpha=4, target_modules=["q", "v"]))
    batches = random_batches(uneven_pairs(), BATCH, pad_id=0, seed=1)
    result = train_loop(model, batches, STEPS, lr=1e-2, progress=False)
    return {k: v.clone() for k, v in model.adapter_state_dict().items()}, result.losses


def pretrain() -> tuple[dict[str, torch.Tensor], list[float]]:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    tokens = torch.randint(CONFIG.vocab_size, (2000,), generator=torch.Generator().manual_seed(2))
    batches = lm_windows(tokens, CONFIG.block_size, BATCH, seed=3)
    result = train_loop(model, batches, STEPS, lr=1e-2, weight_decay=0.1, decay_vectors=True,
                        progress=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, result.losses


def main(out: Path) -> None:
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if several:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if several else 0
    out.mkdir(parents=True, exist_ok=True)
    for case in (finetune, pretrain):
        tensors, losses = case()
        path = out / f"{case.__name__}.rank{rank}.pt"
        torch.save({"tensors": tensors, "losses": losses}, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)  # complete or absent
    if several:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
