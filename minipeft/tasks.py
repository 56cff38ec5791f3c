"""Downstream tasks in miniature, their data files and their metrics.

Each task imitates a benchmark from the PEFT papers, written in the toy world of
`minipeft.corpus`:

    task        imitates  prompt                                       answer       metric
    sentiment   SST-2     review : the film was dull . sentiment :     " negative"  accuracy
    paraphrase  MRPC      sentence one : ... sentence two : ... same : " yes"       accuracy
    table2text  E2E       name[the golden fox] food[pizza] ... :       " the ..."   BLEU
    unscramble  GPT-3     asinoc=                                      "casino"     exact match
    arithmetic  GPT-3     12 + 35 =                                    " 47"        exact match

An `Example` is a prompt and its answer. The model reads `prompt + answer + <|endoftext|>`
and is trained to predict only the answer and the end marker (`encode_example`): the
prompt is given, not something to learn. The prompt formats come from `minipeft.corpus`,
so pretraining has already shown the model each pattern, except sentiment's: the corpus ends
reviews with "verdict : good", so the model knows the concept but not the task's wording
and starts at chance. The examples are drawn from their own random stream (seeded by task
name and seed), not copied from the corpus.

Splits are train (2000), validation (200) and test (200), with no prompt in two splits and
both labels equally often in classification tasks. `sentiment` also has a `shift` split
whose reviews are about restaurants, hotels and gadgets instead of films, books and songs:
a small domain-shift test. The splits are written once to data/tasks/<task>.<split>.jsonl.
"""
from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from minipeft.corpus import (
    SPELLING_WORDS, arithmetic_prompt, make_paraphrase_pair, make_restaurant, make_review,
    make_sum, paraphrase_prompt, scramble, sentiment_prompt, table2text_prompt,
    unscramble_prompt,
)
from minipeft.files import atomic_write_text
from minipeft.paths import TASKS_DIR, DataFileError

# Target value for positions that carry no loss; the same -100 as minipeft.model and
# torch's cross_entropy(ignore_index=-100).
IGNORE_INDEX = -100
SPLIT_SIZES = {"train": 2000, "validation": 200, "test": 200}
SHIFT_SIZE = 200


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str  # the model continues the prompt with exactly this text
    label: str | None = None  # the class ("positive", "yes") for classification tasks


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    metric: str  # a key of METRICS
    generate: Callable[[int], dict[str, list[Example]]]  # seed -> {split: examples}
    splits: tuple[str, ...]
    label_words: list[str] | None = None  # the possible answers of a classification task


# ---------------------------------------------------------------------------------------
# Drawing examples
# ---------------------------------------------------------------------------------------


def _task_rng(task_name: str, seed: int) -> random.Random:
    # A string seed gives each task its own stream, different from the corpus' Random(seed).
    return random.Random(f"minipeft.tasks/{task_name}/{seed}")


def _draw_split(rng: random.Random, make: Callable[[random.Random, int], Example],
                size: int, seen: set[str]) -> list[Example]:
    """`size` examples from `make(rng, position)` whose prompts are not in `seen` yet.

    A repeated prompt is drawn again at the same position, so classification makers that
    alternate labels on `position` stay exactly balanced.
    """
    examples = []
    while len(examples) < size:
        example = make(rng, len(examples))
        if example.prompt not in seen:
            seen.add(example.prompt)
            examples.append(example)
    rng.shuffle(examples)  # so the labels do not simply alternate in the file
    return examples


def _draw_splits(rng: random.Random, make: Callable[[random.Random, int], Example],
                 seen: set[str] | None = None) -> dict[str, list[Example]]:
    """train / validation / test, with no prompt in more than one split."""
    seen = set() if seen is None else seen
    return {split: _draw_split(rng, make, size, seen) for split, size in SPLIT_SIZES.items()}


def _sentiment_example(rng: random.Random, positive: bool, shift: bool) -> Example:
    label = "positive" if positive else "negative"
    return Example(sentiment_prompt(make_review(rng, positive, shift)), " " + label, label)


def _generate_sentiment(seed: int) -> dict[str, list[Example]]:
    rng = _task_rng("sentiment", seed)
    seen: set[str] = set()
    splits = _draw_splits(rng, lambda r, i: _sentiment_example(r, i % 2 == 0, False), seen)
    splits["shift"] = _draw_split(
        rng, lambda r, i: _sentiment_example(r, i % 2 == 0, True), SHIFT_SIZE, seen)
    return splits


def _paraphrase_example(rng: random.Random, same: bool) -> Example:
    label = "yes" if same else "no"
    return Example(paraphrase_prompt(*make_paraphrase_pair(rng, same)), " " + label, label)


def _generate_paraphrase(seed: int) -> dict[str, list[Example]]:
    return _draw_splits(_task_rng("paraphrase", seed),
                        lambda r, i: _paraphrase_example(r, i % 2 == 0))


def _table2text_example(rng: random.Random) -> Example:
    record, sentence = make_restaurant(rng)
    return Example(table2text_prompt(record), " " + sentence)


def _generate_table2text(seed: int) -> dict[str, list[Example]]:
    return _draw_splits(_task_rng("table2text", seed), lambda r, i: _table2text_example(r))


def _unscramble_example(rng: random.Random) -> Example:
    word = rng.choice(SPELLING_WORDS)
    return Example(unscramble_prompt(scramble(rng, word)), word)


def _generate_unscramble(seed: int) -> dict[str, list[Example]]:
    return _draw_splits(_task_rng("unscramble", seed), lambda r, i: _unscramble_example(r))


def _arithmetic_example(rng: random.Random, held_out: bool) -> Example:
    a, b = make_sum(rng, held_out)
    return Example(arithmetic_prompt(a, b), f" {a + b}")


def _generate_arithmetic(seed: int) -> dict[str, list[Example]]:
    """Training sums come from the pretraining distribution; evaluation sums never occur in
    the corpus or in the training split (see `corpus.is_held_out_sum`)."""
    rng, seen = _task_rng("arithmetic", seed), set()
    return {split: _draw_split(rng, lambda r, i, held=split != "train": _arithmetic_example(r, held),
                               size, seen)
            for split, size in SPLIT_SIZES.items()}


STANDARD_SPLITS = tuple(SPLIT_SIZES)
TASKS: dict[str, Task] = {task.name: task for task in [
    Task("sentiment", "SST-2-like: is a short review positive or negative? With 'but' "
         "the last clause decides, and 'not' flips an adjective.",
         "accuracy", _generate_sentiment, STANDARD_SPLITS + ("shift",),
         label_words=[" positive", " negative"]),
    Task("paraphrase", "MRPC-like: do two sentences mean the same (synonyms, reordering, "
         "passive voice) or differ in one to three facts?",
         "accuracy", _generate_paraphrase, STANDARD_SPLITS, label_words=[" yes", " no"]),
    Task("table2text", "E2E-like: describe a restaurant record in one sentence.",
         "bleu", _generate_table2text, STANDARD_SPLITS),
    Task("unscramble", "GPT-3's word unscrambling: asinoc= -> casino.",
         "exact_match", _generate_unscramble, STANDARD_SPLITS),
    Task("arithmetic", "Two-number sums of 0-99: 12 + 35 = -> 47.",
         "exact_match", _generate_arithmetic, STANDARD_SPLITS),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


# ---------------------------------------------------------------------------------------
# Data files
# ---------------------------------------------------------------------------------------


def task_file(task_name: str, split: str, data_dir: str | Path = TASKS_DIR) -> Path:
    task = get_task(task_name)
    if split not in task.splits:
        raise ValueError(f"task {task_name!r} has no split {split!r}; "
                         f"valid splits: {', '.join(task.splits)}")
    return Path(data_dir) / f"{task_name}.{split}.jsonl"


def write_task_data(out_dir: str | Path = TASKS_DIR, seed: int = 0) -> list[Path]:
    """Generate every task and write one JSON-lines file per split; returns the paths."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written = []
    for name, task in TASKS.items():
        for split, examples in task.generate(seed).items():
            path = task_file(name, split, out_dir)
            atomic_write_text(path, "".join(json.dumps(asdict(ex)) + "\n" for ex in examples))
            written.append(path)
    return written


def load_examples(task_name: str, split: str, data_dir: str | Path = TASKS_DIR) -> list[Example]:
    """The examples of one split, read from data/tasks/<task>.<split>.jsonl."""
    path = task_file(task_name, split, data_dir)
    if not path.is_file():
        raise DataFileError(path, "task file not found")
    try:
        return [Example(**json.loads(line))
                for line in path.read_text(encoding="utf-8").splitlines()]
    except (ValueError, TypeError) as error:
        raise DataFileError(path, f"not a valid task file ({error})") from None


# ---------------------------------------------------------------------------------------
# Turning an example into training tensors (as lists)
# ---------------------------------------------------------------------------------------


def encode_example(example: Example, tokenizer) -> tuple[list[int], list[int]]:
    """Token ids for next-token training with the loss on the answer only.

    With s = prompt tokens p_0..p_{P-1}, then answer tokens a_0..a_{A-1}, then eos:
        input_ids  = s[0 : -1]                                     (length P + A)
        target_ids = s[1 :], with the P-1 prompt positions set to IGNORE_INDEX
    so target_ids[t] is the token that follows input_ids[t]:
        position t = P-1 (the last prompt token) predicts a_0,
        position t = P+A-1 (the last answer token) predicts eos.
    """
    prompt_ids = tokenizer.encode(example.prompt)
    answer_ids = tokenizer.encode(example.answer) + [tokenizer.eos_id]
    sequence = prompt_ids + answer_ids
    input_ids = sequence[:-1]
    target_ids = [IGNORE_INDEX] * (len(prompt_ids) - 1) + answer_ids
    return input_ids, target_ids


# ---------------------------------------------------------------------------------------
# Metrics (plain Python; every score is in [0, 1], higher is better)
# ---------------------------------------------------------------------------------------


def _check_pairs(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("nothing to score: no references")


def accuracy(predictions: list[str], references: list[str]) -> float:
    """Fraction of predicted labels equal to the gold label (surrounding spaces ignored)."""
    _check_pairs(predictions, references)
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(references)


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Fraction of predictions with exactly the reference's words (whitespace ignored)."""
    _check_pairs(predictions, references)
    return sum(p.split() == r.split() for p, r in zip(predictions, references)) / len(references)


def token_f1(predictions: list[str], references: list[str]) -> float:
    """SQuAD's bag-of-words F1, averaged over examples.

    overlap = words the two share, counted with multiplicity (min of the two counts)
    precision = overlap / len(prediction),  recall = overlap / len(reference)
    F1 = 2 · precision · recall / (precision + recall)
    """
    _check_pairs(predictions, references)
    total = 0.0
    for prediction, reference in zip(predictions, references):
        pred_words, ref_words = prediction.split(), reference.split()
        if not pred_words or not ref_words:
            total += float(pred_words == ref_words)  # both empty counts as a match
            continue
        overlap = sum((Counter(pred_words) & Counter(ref_words)).values())
        if overlap:
            precision, recall = overlap / len(pred_words), overlap / len(ref_words)
            total += 2 * precision * recall / (precision + recall)
    return total / len(references)


def _ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def bleu(predictions: list[str], references: list[str], max_n: int = 4) -> float:
    """Corpus-level BLEU-4 with one reference per prediction (Papineni et al., 2002).

    p_n  = (clipped n-gram matches + 1) / (n-grams in the predictions + 1)   (+1 smoothing,
           so one missing 4-gram does not make the whole score 0)
    BP   = 1 if c > r else exp(1 - r / c)    c, r: total prediction / reference length
    BLEU = BP · exp( (1/4) · Σ_{n=1..4} log p_n )
    "Clipped" means an n-gram counts at most as often as it appears in the reference.
    """
    _check_pairs(predictions, references)
    matches, totals = [0] * max_n, [0] * max_n
    pred_length = ref_length = 0
    for prediction, reference in zip(predictions, references):
        pred_words, ref_words = prediction.split(), reference.split()
        pred_length += len(pred_words)
        ref_length += len(ref_words)
        for n in range(1, max_n + 1):
            pred_ngrams, ref_ngrams = _ngrams(pred_words, n), _ngrams(ref_words, n)
            matches[n - 1] += sum((pred_ngrams & ref_ngrams).values())
            totals[n - 1] += sum(pred_ngrams.values())
    if pred_length == 0:
        return 0.0
    log_precision = sum(math.log((m + 1) / (t + 1)) for m, t in zip(matches, totals)) / max_n
    brevity_penalty = 1.0 if pred_length > ref_length else math.exp(1 - ref_length / pred_length)
    return brevity_penalty * math.exp(log_precision)


METRICS: dict[str, Callable[[list[str], list[str]], float]] = {
    "accuracy": accuracy, "exact_match": exact_match, "token_f1": token_f1, "bleu": bleu,
}


def score(task_name: str, predictions: list[str], references: list[str]) -> float:
    """The task's own metric of `predictions` against `references`."""
    return METRICS[get_task(task_name).metric](predictions, references)


def chance_baseline(task_name: str, split: str = "validation") -> float:
    """Score of a model that ignores its input and always gives the train split's most
    common answer: majority-class accuracy for classification tasks (0.5 with balanced
    labels), and for generation tasks the floor any fine-tuned model should beat."""
    train_answers = Counter(ex.answer for ex in load_examples(task_name, "train"))
    most_common = train_answers.most_common(1)[0][0]
    references = [ex.answer for ex in load_examples(task_name, split)]
    return score(task_name, [most_common] * len(references), references)
