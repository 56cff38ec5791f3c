"""SPoT: prompt transfer is an exact copy; similarities follow their formulas."""
import math

import pytest
import torch

from minipeft.methods.base import get_peft_model
from minipeft.methods.prompts import PromptTuningConfig
from minipeft.methods.spot import (init_from_source, most_similar_source, similarity_matrix,
                                   task_embedding, task_similarity, train_prompt)
from minipeft.model import GPT, GPTConfig
from minipeft.paths import CHECKPOINT_DIR
from minipeft.pretrained import load_pretrained

CONFIG = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, d_model=16)


def random_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIG).eval()


def random_prompt(seed: int, k: int = 4) -> torch.Tensor:
    return torch.randn(k, CONFIG.d_model, generator=torch.Generator().manual_seed(seed))


def cosine(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def test_target_prompt_is_the_source_prompt_bit_for_bit():
    base = random_gpt()
    source = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=4, init="random"))
    with torch.no_grad():
        source.prompt.mul_(1 / 3)  # values with many significant bits
    target = init_from_source(base, source)
    assert torch.equal(target.prompt, source.prompt)
    assert target.prompt.data_ptr() != source.prompt.data_ptr()  # a copy: training one
    with torch.no_grad():                                         # leaves the other alone
        target.prompt.add_(1.0)
    assert not torch.equal(target.prompt, source.prompt)
    assert target.prompt.requires_grad and target.count_parameters()[0] == 4 * CONFIG.d_model


def test_transfer_needs_matching_shapes():
    source = random_prompt(0, k=4)
    with pytest.raises(ValueError, match="same num_virtual_tokens"):
        init_from_source(random_gpt(), source, PromptTuningConfig(num_virtual_tokens=6))


def test_average_similarity_is_the_cosine_of_the_mean_vectors():
    a, b = random_prompt(1), random_prompt(2)
    mean_a = [sum(col) / len(col) for col in zip(*a.tolist())]
    mean_b = [sum(col) / len(col) for col in zip(*b.tolist())]
    assert task_embedding(a).tolist() == pytest.approx(mean_a, abs=1e-6)
    assert task_similarity(a, b) == pytest.approx(cosine(mean_a, mean_b), abs=1e-6)


def test_per_token_similarity_averages_all_token_pairs():
    a, b = random_prompt(1, k=3), random_prompt(2, k=5)
    pairs = [cosine(u, v) for u in a.tolist() for v in b.tolist()]
    assert task_similarity(a, b, "per_token") == pytest.approx(sum(pairs) / 15, abs=1e-6)


def test_similarity_matrix_is_symmetric_with_a_unit_diagonal():
    prompts = {name: random_prompt(seed) for seed, name in enumerate("abc")}
    S = similarity_matrix(prompts)
    assert S.shape == (3, 3)
    torch.testing.assert_close(S, S.T)
    torch.testing.assert_close(S.diagonal(), torch.ones(3))
    assert S[0, 1].item() == pytest.approx(task_similarity(prompts["a"], prompts["b"]))


def test_most_similar_source_picks_the_nearest_prompt():
    target = random_prompt(0)
    sources = {"far": random_prompt(1), "near": target + 0.1 * random_prompt(2),
               "opposite": -target}
    name, score = most_similar_source(target, sources)
    assert name == "near" and score == pytest.approx(task_similarity(target, sources["near"]))


def test_bad_similarity_inputs_are_rejected():
    with pytest.raises(ValueError, match="unknown similarity"):
        task_similarity(random_prompt(0), random_prompt(1), method="l2")
    with pytest.raises(ValueError, match="no source prompts"):
        most_similar_source(random_prompt(0), {})
    with pytest.raises(ValueError, match=r"\(k, d\) prompt tensor"):
        task_embedding(torch.zeros(16))


# --------------------------------------------------------------------------------------
# Prompts trained on the pretrained `small` model (skipped until the checkpoint exists)
# --------------------------------------------------------------------------------------
SMALL = CHECKPOINT_DIR / "small.safetensors"


@pytest.fixture(scope="module")
def trained_prompts():
    """Prompts (k = 10, vocabulary init) after 60 steps at lr 0.03: sentiment with two seeds
    (a different initialisation and batch order each) and arithmetic."""
    if not SMALL.is_file():
        pytest.skip("data/checkpoints/small.safetensors is not built yet")
    base = load_pretrained("small")
    return {name: train_prompt(base, task, steps=60, lr=0.03, seed=seed)[0]
            for name, task, seed in [("sentiment/0", "sentiment", 0),
                                     ("sentiment/1", "sentiment", 1),
                                     ("arithmetic/0", "arithmetic", 0)]}


@pytest.mark.slow
def test_a_task_is_closest_to_itself_under_another_seed(trained_prompts):
    S = similarity_matrix(trained_prompts)  # order: sentiment/0, sentiment/1, arithmetic/0
    assert S[0, 1] > S[0, 2] and S[0, 1] > S[1, 2]
    sources = {"sentiment": trained_prompts["sentiment/0"],
               "arithmetic": trained_prompts["arithmetic/0"]}
    assert most_similar_source(trained_prompts["sentiment/1"], sources)[0] == "sentiment"


@pytest.mark.slow
def test_train_prompt_from_a_source_starts_at_the_source(trained_prompts):
    source = trained_prompts["arithmetic/0"]
    target, result = train_prompt(source.base_model, "sentiment", steps=1, lr=0.0,
                                  init_from=source)
    assert torch.equal(target.prompt, source.prompt)  # lr = 0: still the exact copy
    assert len(result.losses) == 1
