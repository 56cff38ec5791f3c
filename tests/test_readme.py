"""The README's five-line example runs as printed and does what its comments say."""
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_five_line_example_runs_and_learns(tmp_path, monkeypatch):
    section = README.read_text().split("## The library in five lines", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # it saves to out/
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].final_metric > 0.9  # LoRA learns sentiment (chance 0.5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    probe = torch.tensor([[5, 6, 7, 8]])
    merged = namespace["merged"]
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert merged(probe).logits.shape[-1] == merged.config.vocab_size
