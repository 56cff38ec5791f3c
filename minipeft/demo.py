"""The main demo (`python -m minipeft demo`): LoRA fine-tuning of the shipped `small` GPT.

It walks the whole story of the course in under a minute on a laptop CPU:
frozen base → attach LoRA → train only φ → evaluate (in-domain and domain shift) →
merge into the weights → save a tiny adapter file.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def run_demo(steps: int = 150, seed: int = 0, device: torch.device | str = "cpu",
             precision: str = "fp32") -> dict:
    from minipeft.methods.base import get_peft_model
    from minipeft.methods.lora import LoraConfig
    from minipeft.paths import CHECKPOINT_DIR
    from minipeft.pretrained import load_pretrained
    from minipeft.tasks import chance_baseline
    from minipeft.tokenizer import load_tokenizer
    from minipeft.train import answer_loss, evaluate_task, train

    torch.manual_seed(seed)
    tokenizer = load_tokenizer()
    model = load_pretrained("small").to(device)
    print(f"1. pretrained 'small' GPT: {model.num_parameters():,} parameters, all frozen")
    before = evaluate_task(model, "sentiment", "validation", tokenizer)
    loss_before = answer_loss(model, "sentiment", "validation", limit=100)
    print(f"2. sentiment before fine-tuning: accuracy {before:.3f} "
          f"(majority baseline {chance_baseline('sentiment'):.3f}), answer loss {loss_before:.3f}")

    peft = get_peft_model(model, LoraConfig(r=8, alpha=16, target_modules=["q", "v"]))
    print("3. LoRA r=8 on q and v:   ", end="")
    peft.print_trainable_parameters()

    result = train(peft, "sentiment", steps=steps, lr=3e-3, seed=seed, precision=precision)
    shift = evaluate_task(peft, "sentiment", "shift", tokenizer)
    loss_after = answer_loss(peft, "sentiment", "validation", limit=100)
    print(f"4. after {steps} steps ({result.seconds:.1f}s): accuracy {result.final_metric:.3f}, "
          f"domain-shift accuracy {shift:.3f}, answer loss {loss_after:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        saved = peft.save_pretrained(Path(tmp) / "adapter")
        adapter_kb = sum(f.stat().st_size for f in saved.iterdir()) / 1024
    base_kb = (CHECKPOINT_DIR / "small.safetensors").stat().st_size / 1024
    print(f"5. adapter file: {adapter_kb:.0f} KiB, versus {base_kb:.0f} KiB for the base")

    probe = torch.tensor([tokenizer.encode("review : the film was lovely . sentiment :")],
                         device=device)
    unmerged = peft(probe).logits
    merged_model = peft.merge_and_unload()
    gap = (merged_model(probe).logits - unmerged).abs().max().item()
    print(f"6. merged LoRA into the weights: max logit difference {gap:.1e}")
    return {"before": before, "after": result.final_metric, "shift": shift,
            "answer_loss_before": loss_before, "answer_loss_after": loss_after,
            "adapter_kib": adapter_kb, "merge_gap": gap}
