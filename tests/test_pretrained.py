"""The shipped checkpoints: they load, they learned the toy world, they fine-tune, bad files fail."""
import math
import random
import shutil

import pytest
import torch

from minipeft.corpus import ANIMALS, COLOURS, NAMES, generate_corpus, with_article
from minipeft.model import GPT
from minipeft.paths import CHECKPOINT_DIR
from minipeft.pretrained import SIZES, corpus_tokens, load_pretrained, pretrain
from minipeft.tasks import chance_baseline
from minipeft.tokenizer import load_tokenizer
from minipeft.train import lm_loss, train

# The fine-tuning thresholds below were measured with one thread; float sums in another
# order land elsewhere (arithmetic's 300-step full fine-tune: exact match 0.005 on one
# thread, 0.0 on two), so the file fixes it rather than relying on other test modules.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def small():
    return load_pretrained("small")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SIZES))
def test_every_size_loads_with_its_recipe_config(name):
    model = load_pretrained(name)
    assert isinstance(model, GPT) and not model.training
    assert model.config == SIZES[name].config
    assert model.head.weight.data_ptr() == model.tok_emb.weight.data_ptr()


@pytest.mark.slow
def test_sizes_grow():
    counts = [load_pretrained(n).num_parameters() for n in ("tiny", "small", "base")]
    assert counts == sorted(counts) and counts[0] < 400_000 and 4_000_000 < counts[2] < 9_000_000


@pytest.mark.slow
def test_small_validation_loss_is_far_below_uniform(small, tokenizer):
    # fresh held-out documents (a seed used neither for training nor for the report)
    tokens = corpus_tokens(200, seed=12345, tokenizer=tokenizer)
    loss = lm_loss(small, tokens, small.config.block_size, max_windows=16)
    assert loss < 0.4 * math.log(small.config.vocab_size)


@pytest.mark.slow
def test_small_generates_toy_world_text(small, tokenizer):
    """Greedy continuations use only words of the toy world and end sentences with a full stop."""
    vocabulary = {w for doc in generate_corpus(2000, seed=99) for w in doc.split()}
    for prompt in ["rosa went to the", "the cat ate", "review : the movie was"]:
        idx = torch.tensor([tokenizer.encode(prompt)])
        out = small.generate(idx, 40, temperature=0, eos_id=tokenizer.eos_id)
        text = tokenizer.decode([t for t in out[0].tolist() if t != tokenizer.eos_id])
        words = text.split()
        unknown = [w for w in words if w not in vocabulary]
        assert not unknown, f"{text!r} has non-toy-world words {unknown}"
        assert "." in words, text


@pytest.mark.slow
def test_small_refers_back_to_the_animal_its_story_introduced(small, tokenizer):
    """After "there anna saw a red cat . the", the corpus always continues with " cat".

    Predicting that word needs in-context copying (an induction head: find the earlier
    "a red", copy the word after it; Olsson et al. 2022). Chance among the 16 animals is
    0.06, and a model that has learned only the corpus's templates scores about that.
    Copying is what in-context learning and
    paraphrase (compare two sentences slot by slot) build on; it appears as a phase change
    part-way through pretraining on a corpus that repeats and restates sentences.
    """
    rng, hits = random.Random(0), 0
    for _ in range(50):
        name, animal, colour = rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(COLOURS)
        pet = with_article(f"{colour} {animal}")
        story = f"{name} went to the park .\nthere {name} saw {pet} .\nthe"
        logits = small(torch.tensor([tokenizer.encode(story)])).logits[0, -1]
        hits += int(logits.argmax()) == tokenizer.encode(" " + animal)[0]
    assert hits / 50 > 0.5


# (steps, learning rate, required margin over the chance baseline). Classification gets a
# clear margin; the exact-match tasks start at 0 and need longer to get any answer right, so
# they only have to beat chance. Paraphrase needs more steps at a gentler rate: the model
# already notices where two sentences differ (its corpus corrects restatements word by
# word), and the fine-tune has to turn that into a yes/no answer without overwriting it
# (small, batch 16: 0.55 after 300 steps and 0.835 after 600 at 3e-4; 0.605 after 300 at 1e-3).
FINE_TUNE_CASES = [
    ("sentiment", 80, 1e-3, 0.1),
    ("table2text", 80, 1e-3, 0.1),
    ("unscramble", 300, 1e-3, 0.0),
    ("arithmetic", 300, 1e-3, 0.0),
    ("paraphrase", 600, 3e-4, 0.1),
]


@pytest.mark.slow
@pytest.mark.parametrize("task, steps, lr, margin", FINE_TUNE_CASES)
def test_a_short_full_fine_tune_beats_the_chance_baseline(task, steps, lr, margin):
    torch.manual_seed(0)
    model = load_pretrained("small")
    for p in model.parameters():
        p.requires_grad_(True)
    result = train(model, task, steps=steps, lr=lr, batch_size=16, eval_limit=200,
                   progress=False)
    assert result.final_metric > chance_baseline(task) + margin, (task, result.final_metric)


def test_pretraining_is_deterministic():
    a, report_a = pretrain("tiny", steps=2, progress=False)
    b, report_b = pretrain("tiny", steps=2, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert report_a["validation_loss"] == report_b["validation_loss"]


def test_an_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown device 'gpu'.*use auto, cpu or cuda"):
        pretrain("tiny", steps=1, device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no usable CUDA GPU"):
        pretrain("tiny", steps=1, device="cuda")


def test_unknown_checkpoint_lists_the_sizes():
    with pytest.raises(ValueError, match=r"unknown checkpoint 'huge'.*tiny.*small.*base"):
        load_pretrained("huge")


def test_missing_checkpoint_says_how_to_rebuild(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m minipeft pretrain --size small"):
        load_pretrained("small", directory=tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "tiny.safetensors"
    if damage == "garbage":
        path.write_bytes(b"this is not a safetensors file at all")
    else:
        shutil.copy(CHECKPOINT_DIR / "tiny.safetensors", path)
        path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="corrupt"):
        load_pretrained("tiny", directory=tmp_path)
