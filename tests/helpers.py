"""What the method tests share: a tiny random GPT, random tokens, and the `small` check."""
import torch

from minipeft.methods import PRESETS, get_peft_model, learning_rate
from minipeft.model import GPT, GPTConfig
from minipeft.pretrained import load_pretrained
from minipeft.tasks import chance_baseline
from minipeft.train import answer_loss, train

VOCAB, D = 64, 16  # the tiny test model's vocabulary and width


def tiny_gpt(seed: int = 0) -> GPT:
    """A randomly initialised 2-block GPT: fast enough for exact unit checks."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, d_model=D))


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(seed))


def fine_tune_sentiment(preset: str, steps: int, eval_limit: int = 100):
    """`small` wrapped by a preset and trained on sentiment at the preset's own rate, as the
    CLI does; returns (model, TrainResult)."""
    torch.manual_seed(0)
    model = get_peft_model(load_pretrained("small"), PRESETS[preset]())
    result = train(model, "sentiment", steps=steps, lr=learning_rate(preset),
                   eval_limit=eval_limit, progress=False)
    return model, result


def assert_preset_learns_sentiment(preset: str, steps: int = 80) -> None:
    """Accuracy above chance + 0.1, and the training loss falls to a quarter of its start.

    The base `small` is at chance (its corpus ends reviews with "verdict : good", never
    with the task's label words), so both show what φ learned.
    Trained at the preset's own rate, as the CLI does (3e-3 for the LoRA family; AdaLoRA's
    singular values start at 0 and need it).
    """
    _, result = fine_tune_sentiment(preset, steps)
    assert result.final_metric > chance_baseline("sentiment") + 0.1
    first, last = result.losses[:5], result.losses[-10:]
    assert sum(last) / len(last) < 0.25 * sum(first) / len(first)


def sentiment_answer_loss(model) -> float:
    """Cross-entropy of the answer tokens (label word + end marker), 100 validation rows."""
    return answer_loss(model, "sentiment", "validation", limit=100)
