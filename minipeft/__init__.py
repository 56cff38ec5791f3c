"""minipeft: parameter-efficient fine-tuning from scratch, for teaching.

    from minipeft import load_pretrained, get_peft_model, LoraConfig, learning_rate, train
    model = load_pretrained("small")
    peft = get_peft_model(model, LoraConfig(r=8, alpha=16, target_modules=["q", "v"]))
    train(peft, task="sentiment", steps=150, lr=learning_rate("lora"))
"""
from minipeft.device import default_device
from minipeft.methods import *  # noqa: F401,F403  (every Config, get_peft_model, PRESETS)
from minipeft.methods import __all__ as _method_names
from minipeft.model import GPT, GPTConfig
from minipeft.pretrained import load_pretrained
from minipeft.tokenizer import load_tokenizer
from minipeft.train import evaluate_task, train

__all__ = ["GPT", "GPTConfig", "load_pretrained", "load_tokenizer", "train", "evaluate_task",
           "default_device", *_method_names]
