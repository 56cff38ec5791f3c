"""Tests for the toy-world corpus generator and the byte-level BPE tokenizer."""
import json
import random
import re

import pytest

from minipeft import corpus
from minipeft.corpus import END_OF_TEXT, corpus_text, generate_corpus
from minipeft.paths import REBUILD_COMMAND, DataFileError
from minipeft.tokenizer import TRAINING_DOCUMENTS, BPETokenizer, load_tokenizer, pre_split

# One regular expression per document kind, written from the formats in the brief rather
# than from the generator's code. A story line is plain words and punctuation.
LINE_PATTERNS = {
    "review": r"review : [a-z ,]+ \. verdict : (good|bad)",
    "paraphrase": r"sentence one : [a-z0-9 ,]+ \. sentence two : [a-z0-9 ,]+ \. same : (yes|no)",
    "echo": r"([a-z0-9 ,]+ \.) again , \1",
    "restatement": r"[a-z0-9 ,]+ \. in other words , [a-z0-9 ,]+ \.",
    "corrected": r"[a-z0-9 ,]+ \. in other words , [a-z0-9 ,]+ \( no , [a-z0-9]+ \)[a-z0-9 ,]* \.",
    "table": (r"name\[the [a-z]+ [a-z]+\] food\[[a-z]+\] area\[[a-z ]+\] "
              r"price\[[a-z]+\]( rating\[[a-z]+\])? : [a-z ,]+ \."),
    "spelling": r"[a-z]+=[a-z]( [a-z])+",
    "unscramble": r"[a-z]+=[a-z]+",
    "sums": r"\d+ \+ \d+ = \d+",
    "story": r"[a-z ,]+ \.",
}


@pytest.fixture(scope="module")
def documents():
    return generate_corpus(300, seed=0)


@pytest.fixture(scope="module")
def lines(documents):
    return [line for doc in documents for line in doc.split("\n")]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def line_kind(line):
    kinds = [kind for kind, pattern in LINE_PATTERNS.items() if re.fullmatch(pattern, line)]
    assert len(kinds) == 1, f"line matches {kinds}: {line!r}"
    return kinds[0]


# --- corpus ------------------------------------------------------------------------------


def test_corpus_is_reproducible_from_its_seed():
    assert generate_corpus(40, seed=7) == generate_corpus(40, seed=7)
    assert generate_corpus(40, seed=7) != generate_corpus(40, seed=8)


def test_every_line_has_one_known_kind_and_every_kind_occurs(lines):
    kinds = {line_kind(line) for line in lines}
    assert kinds == set(LINE_PATTERNS)


# The line kinds a paraphrase document is made of: the task's labelled pairs, echoes,
# restatements and corrected restatements.
PARAPHRASE_LINE_KINDS = {"paraphrase", "echo", "restatement", "corrected"}


def document_kind(document):
    kind = line_kind(document.split("\n")[0])
    return {"unscramble": "spelling", **dict.fromkeys(PARAPHRASE_LINE_KINDS, "paraphrase")
            }.get(kind, kind)


def test_paraphrase_documents_are_four_ninths_and_the_other_kinds_share_the_rest():
    """The brief's weights: paraphrase 4, each of the five other kinds 1 (out of 9)."""
    kinds = [document_kind(doc) for doc in generate_corpus(1800, seed=3)]
    counts = {kind: kinds.count(kind) for kind in set(kinds)}
    assert len(counts) == 6
    assert abs(counts.pop("paraphrase") / 1800 - 4 / 9) < 0.04
    for kind, count in counts.items():
        assert abs(count / 1800 - 1 / 9) < 0.025, (kind, count)


def test_paraphrase_documents_mix_the_four_line_shapes(documents):
    paraphrase_docs = [d.split("\n") for d in documents if document_kind(d) == "paraphrase"]
    assert all(4 <= len(doc) <= 6 for doc in paraphrase_docs)
    shapes = [line_kind(line) for doc in paraphrase_docs for line in doc]
    assert set(shapes) == PARAPHRASE_LINE_KINDS
    for shape in PARAPHRASE_LINE_KINDS:
        assert 0.15 < shapes.count(shape) / len(shapes) < 0.35, (shape, shapes.count(shape))


def test_corpus_vocabulary_is_a_few_hundred_lowercase_words(documents):
    # Scrambled words are not vocabulary; leave the spelling lines out.
    text = "\n".join(line for doc in documents for line in doc.split("\n")
                     if "=" not in line)
    words = set(re.findall(r"[a-z]+", text))
    assert 150 <= len(words) <= 500
    assert text == text.lower()


def test_sums_are_correct(lines):
    sums = [line for line in lines if line_kind(line) == "sums"]
    assert sums
    for line in sums:
        a, b, total = map(int, re.findall(r"\d+", line))
        assert 0 <= a <= 99 and 0 <= b <= 99 and a + b == total


def test_spelling_and_scrambled_words(lines):
    for line in lines:
        kind = line_kind(line)
        if kind == "spelling":
            word, letters = line.split("=")
            assert letters.replace(" ", "") == word
        elif kind == "unscramble":
            scrambled, word = line.split("=")
            assert sorted(scrambled) == sorted(word) and scrambled != word
            assert word in corpus.SPELLING_WORDS


def test_spelling_words_have_no_anagram_twins():
    signatures = ["".join(sorted(w)) for w in corpus.SPELLING_WORDS]
    assert len(set(signatures)) == len(signatures)
    assert "casino" in corpus.SPELLING_WORDS


def expected_review_label(review):
    """The sentiment rules, applied by reading the text: after 'but' only the last clause
    counts, and 'not' flips the adjective it precedes."""
    clause = review.split(" but ")[-1]
    words = clause.split()
    votes = set()
    for i, word in enumerate(words):
        if word in corpus.POSITIVE_ADJECTIVES or word in corpus.NEGATIVE_ADJECTIVES:
            positive = word in corpus.POSITIVE_ADJECTIVES
            if i > 0 and words[i - 1] == "not":
                positive = not positive
            votes.add(positive)
    assert len(votes) == 1, review
    return "good" if votes.pop() else "bad"


def test_review_labels_follow_the_stated_rules(lines):
    reviews = [line for line in lines if line_kind(line) == "review"]
    shapes = {"but": 0, "not": 0}
    for line in reviews:
        review, label = re.fullmatch(r"review : (.*) verdict : (\w+)", line).groups()
        assert expected_review_label(review) == label, line
        shapes["but"] += " but " in review
        shapes["not"] += " not " in review
    assert shapes["but"] > 0 and shapes["not"] > 0
    labels = [line.split()[-1] for line in reviews]
    assert 0.3 < labels.count("good") / len(labels) < 0.7


def test_the_corpus_never_writes_the_sentiment_task_format(documents):
    """Reviews end with "verdict : good|bad"; the task's "sentiment : positive" is never
    seen in pretraining, so the base model starts at chance and fine-tuning has work to do.
    The label words still occur, as ordinary words, so the tokenizer keeps them whole."""
    text = "\n".join(documents)
    assert "sentiment" not in text
    positive_lines = [line for line in text.split("\n") if " positive " in line]
    assert positive_lines and not any(line.startswith("review") for line in positive_lines)


def test_some_reviews_are_about_shift_domain_subjects(lines):
    reviews = [line for line in lines if line_kind(line) == "review"]
    shifted = [r for r in reviews if set(r.split()) & set(corpus.SHIFT_SUBJECTS)]
    assert 0.08 < len(shifted) / len(reviews) < 0.35
    assert not set(corpus.SUBJECTS) & set(corpus.SHIFT_SUBJECTS)


def sentence_meaning(sentence):
    """The facts a paraphrase sentence states, read with one regex per sentence shape."""
    shapes = [  # (pattern, order of the captured facts as colour, animal, verb, other, place)
        (r"the (\w+) (\w+) (\w+) the (\w+) in the (\w+) \.", (0, 1, 2, 3, 4)),
        (r"in the (\w+) , the (\w+) (\w+) (\w+) the (\w+) \.", (1, 2, 3, 4, 0)),
        (r"the (\w+) was (\w+) by the (\w+) (\w+) in the (\w+) \.", (2, 3, 1, 0, 4)),
    ]
    for pattern, order in shapes:
        match = re.fullmatch(pattern, sentence)
        if match:
            return tuple(match.groups()[i] for i in order)
    match = re.fullmatch(r"the (\w+) (\w+) is (\w+) \.", sentence)
    if match:
        colour, animal, mood = match.groups()
        synonym_of = {v: k for k, v in corpus.MOOD_SYNONYMS.items()}
        return colour, animal, synonym_of.get(mood, mood)
    name, number, colour, animals = re.fullmatch(
        r"(\w+) (?:has|owns) (\w+) (\w+) (\w+) \.", sentence).groups()
    number = str(corpus.NUMBER_WORDS.index(number)) if number.isalpha() else number
    return name, number, colour, animals


def test_paraphrase_labels_say_whether_the_facts_are_equal(lines):
    pairs = [re.fullmatch(r"sentence one : (.*) sentence two : (.*) same : (\w+)", line)
             for line in lines if line_kind(line) == "paraphrase"]
    assert {m.group(3) for m in pairs} == {"yes", "no"}
    for match in pairs:
        first, second, label = match.groups()
        assert first != second  # even a "yes" pair is worded differently
        same = sentence_meaning(first) == sentence_meaning(second)
        assert same == (label == "yes"), match.group(0)


def fact_differences(first, second):
    return sum(a != b for a, b in zip(sentence_meaning(first), sentence_meaning(second)))


def test_paraphrase_no_pairs_range_from_one_changed_fact_to_three(lines):
    """Like MRPC's non-paraphrases: from one changed detail to a different event."""
    pairs = [re.fullmatch(r"sentence one : (.*) sentence two : (.*) same : no", line)
             for line in lines if line_kind(line) == "paraphrase"]
    differences = [fact_differences(m.group(1), m.group(2)) for m in pairs if m]
    assert min(differences) == 1 and max(differences) >= 3
    assert differences.count(1) > len(differences) / 5


def test_restatements_state_the_same_facts_in_other_words(lines):
    restatements = [line.split(" in other words , ") for line in lines
                    if line_kind(line) == "restatement"]
    assert restatements
    for first, second in restatements:
        assert first != second and sentence_meaning(first) == sentence_meaning(second)


def test_a_correction_follows_the_first_wrong_word_and_repairs_it(lines):
    """"A in other words , ... owls ( no , frogs ) ...": the word before the bracket is the
    first slot where the restatement disagrees with A; the named word puts it right."""
    corrected = [line for line in lines if line_kind(line) == "corrected"]
    assert corrected
    for line in corrected:
        first, second = line.split(" in other words , ")
        before, right_word, after = re.fullmatch(r"(.*) \( no , (\w+) \)(.*)", second).groups()
        wrong = before + after
        assert fact_differences(first, wrong) == 1, line
        repaired = " ".join(before.split()[:-1] + [right_word]) + after
        assert sentence_meaning(repaired) == sentence_meaning(first), line


def test_corpus_text_ends_every_document_with_the_marker():
    text = corpus_text(5, seed=1)
    assert text.count(END_OF_TEXT) == 5 and text.endswith(END_OF_TEXT)
    assert text.split(END_OF_TEXT)[:-1] == generate_corpus(5, seed=1)


# --- tokenizer ---------------------------------------------------------------------------


def test_pre_split_by_hand():
    assert pre_split("the fox ate 47 apples .") == [
        "the", " fox", " ate", " 4", "7", " apples", " ."]
    # Of two spaces, the last joins the word; punctuation runs stay together.
    assert pre_split("a  fox[red]=x") == ["a", " ", " fox", "[", "red", "]=", "x"]


FIXED_STRINGS = [
    "", " ", "hello world", "  two  spaces\n\ttab\r\n", "café naïve ß", "日本語のテキスト",
    "emoji 😀🎉 and 👩‍👩‍👧", "asinoc=casino", "e\u0301", "<|endo", "a<|endoftext|>b",
    "12 + 35 = 47", "under_score __x__", "١٢٣ arabic digits", "\x00\x7f",
]


@pytest.mark.parametrize("text", FIXED_STRINGS)
def test_round_trip_of_unusual_strings(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert "".join(pre_split(text.replace(END_OF_TEXT, ""))) == text.replace(END_OF_TEXT, "")


def test_round_trip_of_random_strings(tokenizer):
    rng = random.Random(1234)
    alphabet = list("abcxyz ASINOC019 .,:=[]_\n\t") + ["é", "中", "😀", "\u0301", "<|", "|>"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert tokenizer.decode(tokenizer.encode(text)) == text, repr(text)
    for _ in range(100):  # any code point outside the surrogate range
        text = "".join(chr(rng.choice([rng.randint(0, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                       for _ in range(rng.randint(1, 10)))
        assert tokenizer.decode(tokenizer.encode(text)) == text, repr(text)


@pytest.mark.parametrize("word", [
    " happy", " fox", " wonderful", " terrible", " positive", " negative", " yes", " no",
    " movie", " restaurant", " golden", " pizza", "casino",
])
def test_frequent_corpus_words_are_single_tokens(tokenizer, word):
    ids = tokenizer.encode(word)
    assert len(ids) == 1
    assert tokenizer.token_text(ids[0]) == word


def test_digits_are_always_single_tokens(tokenizer):
    assert tokenizer.encode("1234567890") == [tokenizer.encode(d)[0] for d in "1234567890"]


def test_end_of_text_is_one_special_token(tokenizer):
    eos = tokenizer.eos_id
    assert eos == tokenizer.vocab_size - 1 == len(tokenizer) - 1
    assert tokenizer.encode(END_OF_TEXT) == [eos]
    assert tokenizer.encode("a fox" + END_OF_TEXT + "b") == (
        tokenizer.encode("a fox") + [eos] + tokenizer.encode("b"))
    assert tokenizer.decode([eos]) == END_OF_TEXT
    # A piece of the marker is ordinary text.
    assert eos not in tokenizer.encode("<|endoftext|")


def test_shipped_tokenizer_has_the_agreed_size(tokenizer):
    assert tokenizer.vocab_size == 2048


def test_invalid_utf8_decodes_to_replacement_character(tokenizer):
    assert tokenizer.decode([0xFF]) == "\ufffd"


def test_bpe_merges_on_a_hand_counted_corpus():
    # Chunks: "abab", " abab", " ab".
    # 1. pairs: (a,b)=5  (b,a)=2  (" ",a)=2          -> merge a b    = 256 "ab"
    # 2. pairs: (256,256)=2  (" ",256)=2, a tie       -> smaller ids: (32,256) = 257 " ab"
    # 3. chunks [256,256] [257,256] [257]: both pairs once -> (256,256)  = 258 "abab"
    # 4. chunks [258] [257,256] [257]                 -> (257,256)     = 259 " abab"
    # 5. no pairs left: training stops early.
    tok = BPETokenizer.train(["abab abab ab"], vocab_size=300)
    assert tok.merges == [(97, 98), (32, 256), (256, 256), (257, 256)]
    assert [tok.token_text(i) for i in range(256, 260)] == ["ab", " ab", "abab", " abab"]
    assert tok.encode("abab abab ab") == [258, 259, 257]
    assert tok.eos_id == 260 and tok.vocab_size == 261
    assert tok.encode("ba") == [98, 97]  # no merge learned for "ba"


def test_bpe_weights_pairs_by_chunk_frequency():
    # Chunks "xy" x1, " xy" x2, " yz" x2: (x,y) occurs 3 times, every other pair twice.
    tok = BPETokenizer.train(["xy xy xy yz yz"], vocab_size=258)
    assert tok.merges == [(120, 121)]


def test_bpe_never_merges_across_chunks():
    # "a.a.a.a." is eight one-character chunks, so although "a." repeats there is no pair.
    assert BPETokenizer.train(["a.a.a.a."], vocab_size=300).merges == []


def test_bpe_learns_nothing_from_the_end_of_text_marker():
    # The marker is cut out before training: only "ab" is left to merge.
    assert BPETokenizer.train(["ab" + END_OF_TEXT + "ab"], vocab_size=300).merges == [(97, 98)]


def test_training_is_deterministic_and_respects_vocab_size():
    texts = generate_corpus(100, seed=5)
    first = BPETokenizer.train(texts, vocab_size=400)
    second = BPETokenizer.train(texts, vocab_size=400)
    assert first.merges == second.merges and first.vocab_size == 400


def test_shipped_tokenizer_matches_a_fresh_build(tokenizer):
    fresh = BPETokenizer.train(generate_corpus(TRAINING_DOCUMENTS, seed=0), vocab_size=2048)
    assert fresh.merges == tokenizer.merges, "rebuild with " + REBUILD_COMMAND


def test_save_and_load_give_identical_encodings(tokenizer, tmp_path):
    path = tmp_path / "tok.json"
    tokenizer.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == tokenizer.merges and loaded.eos_id == tokenizer.eos_id
    text = corpus_text(20, seed=9) + "😀 asinoc"
    assert loaded.encode(text) == tokenizer.encode(text)
    data = json.loads(path.read_text(encoding="utf-8"))  # plain, readable JSON
    assert data["special_tokens"] == {END_OF_TEXT: 2047}
    assert [" happy" == text for _, _, text in data["merges"]].count(True) == 1


@pytest.mark.parametrize("content", [
    None,  # missing file
    "{not json",
    '{"merges": [[97, 98, "ab"]]}',  # no special tokens
    '{"special_tokens": {"<|endoftext|>": 257}, "merges": [[97, 98, "xy"]]}',  # text edited
    '{"special_tokens": {"<|endoftext|>": 257}, "merges": [[97, 300, "a?"]]}',  # future id
])
def test_missing_or_corrupt_file_gives_one_clear_error(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFileError) as error:
        load_tokenizer(path)
    assert str(path) in str(error.value) and REBUILD_COMMAND in str(error.value)
