"""A seeded generator of "toy world" English: the text our small GPT is pretrained on.

Real language models are pretrained on web text and then adapted to downstream tasks. To
make that story fit on a laptop we invent a tiny world: a few hundred lowercase words in
clear categories (animals, colours, foods, sentiment adjectives, ...) and six kinds of
documents built from them. Each kind is also the *pattern* of one downstream task in
`minipeft.tasks`, so pretraining teaches the model the words and formats, and fine-tuning
(the part the course is about) teaches it to do the task well:

    kind         example line                                                 task
    story        the red fox chased the duck in the park .                    (general text)
    review       review : the movie was lovely . verdict : good               sentiment
    paraphrase   sentence one : ... sentence two : ... same : yes             paraphrase
                 (and echoes, restatements, corrected restatements: see below)
    table        name[the golden fox] food[pizza] ... : the golden fox ...    table2text
    spelling     casino=c a s i n o      and      asinoc=casino               unscramble
    sums         12 + 35 = 47                                                 arithmetic

Reviews are the one pattern written differently from their task. The corpus ends a review
with an unnamed verdict (" verdict : good"); the sentiment task asks for " sentiment :
positive". So, like a real language model that has read many reviews but never SST-2's
format, the pretrained model has the concept (is this review favourable?) at the end of a
review but not the task's wording and label words: zero-shot it is near chance, and a
fine-tune only has to connect the two. (Reviews written in the task's own format would let
every checkpoint score 100% before any fine-tuning, leaving nothing to teach.)

Paraphrase documents are drawn four times as often as each other kind, and most of their
lines repeat or restate a sentence. That is what teaches the model to look back and copy
from its context, the skill that comparing two sentences (and in-context learning) needs.

Punctuation is written as separate words (" ." " ,") so the text stays easy to read and
to tokenize. Everything is drawn from a `random.Random(seed)`, never from the global random
state, so `generate_corpus(n, seed)` returns exactly the same documents on every machine.
The `*_prompt` functions below are the single definition of each task's format: the corpus
writes `prompt + answer` lines with them (all but `sentiment_prompt`, see above) and
`minipeft.tasks` builds its prompts with them, so the two can never drift apart.
"""
from __future__ import annotations

import random

# The marker between documents. The tokenizer turns it into its one special token.
END_OF_TEXT = "<|endoftext|>"

# ---------------------------------------------------------------------------------------
# The vocabulary, by category
# ---------------------------------------------------------------------------------------
POSITIVE_ADJECTIVES = [
    "wonderful", "great", "lovely", "brilliant", "excellent", "delightful", "charming",
    "superb", "fantastic", "pleasant", "amazing", "beautiful", "enjoyable", "fun", "clever",
    "moving",
]
NEGATIVE_ADJECTIVES = [
    "awful", "boring", "terrible", "dull", "bad", "horrible", "poor", "weak", "messy",
    "annoying", "dreadful", "tedious", "bland", "silly", "clumsy", "disappointing",
]
# Words that make a review stronger without changing its sentiment.
INTENSIFIERS = ["very", "really", "truly", "quite"]

ANIMALS = [
    "cat", "dog", "fox", "bird", "horse", "rabbit", "mouse", "bear", "owl", "frog", "duck",
    "goat", "sheep", "lion", "wolf", "tiger",
]
# Plurals that do not simply add "s".
IRREGULAR_PLURALS = {"fox": "foxes", "mouse": "mice", "sheep": "sheep", "wolf": "wolves"}
COLOURS = [
    "red", "blue", "green", "yellow", "black", "white", "brown", "grey", "pink", "orange",
    "purple", "golden",
]
FOODS = [
    "bread", "pizza", "soup", "cheese", "apples", "rice", "pasta", "cake", "fish", "salad",
    "noodles", "curry", "burgers", "sushi", "pie",
]
PLACES = [
    "park", "forest", "garden", "river", "village", "city", "kitchen", "market", "school",
    "beach", "library", "casino",
]
NAMES = [
    "anna", "ben", "clara", "david", "emma", "frank", "grace", "henry", "iris", "jack",
    "lucy", "max", "nina", "oscar", "paul", "rosa", "sam", "tom",
]
# NUMBER_WORDS[n] is the word for the number n.
NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve",
]
# Transitive verbs in the past tense whose passive participle is the same word
# ("the fox chased the duck" / "the duck was chased by the fox").
VERBS = [
    "chased", "watched", "helped", "followed", "visited", "greeted", "pushed", "liked",
    "met", "found", "carried", "called",
]
# How an animal feels, and a synonym for each: the raw material of paraphrases.
MOOD_SYNONYMS = {
    "happy": "glad", "sad": "unhappy", "tired": "sleepy", "angry": "cross",
    "scared": "afraid", "calm": "relaxed", "hungry": "starving", "busy": "occupied",
}
MOODS = list(MOOD_SYNONYMS)

# Reviews are about SUBJECTS (films, books, songs) and their ASPECTS (singular nouns, so
# "the plot was" is grammatical). The domain-shift split of the sentiment task uses the
# disjoint SHIFT_SUBJECTS / SHIFT_ASPECTS (cafes, hotels, gadgets). The corpus mentions
# them too, less often, so the words themselves are known.
SUBJECTS = [
    "movie", "film", "book", "song", "show", "album", "play", "novel", "series", "poem",
]
ASPECTS = [
    "acting", "plot", "story", "music", "ending", "writing", "cast", "pacing", "dialogue",
    "humour",
]
SHIFT_SUBJECTS = [
    "restaurant", "hotel", "phone", "laptop", "cafe", "camera", "bakery", "bicycle",
    "blender", "museum",
]
SHIFT_ASPECTS = [
    "service", "staff", "price", "design", "battery", "screen", "room", "coffee", "sound",
    "location",
]
SHIFT_REVIEW_FRACTION = 0.2

# Restaurant records for the table-to-text pattern (E2E-like).
AREAS = ["riverside", "city centre", "harbour", "old town", "hillside", "market square"]
PRICES = ["cheap", "affordable", "expensive"]
RATINGS = ["high", "average", "low"]


def word_categories() -> dict[str, list[str]]:
    """The vocabulary's word classes, as the generator uses them: {category: words}.

    For reading learned prompts (do a vector's nearest tokens share a class?). Each word
    belongs to one category; multi-word areas ("city centre") are left out, and the
    numerals are every number a sum line can contain (0 .. 198).
    """
    categories = {
        "positive adjectives": POSITIVE_ADJECTIVES,
        "negative adjectives": NEGATIVE_ADJECTIVES,
        "intensifiers": INTENSIFIERS,
        "animals": ANIMALS + sorted({plural(a) for a in ANIMALS} - set(ANIMALS)),
        "colours": COLOURS,
        "foods": FOODS,
        "places": PLACES,
        "names": NAMES,
        "number words": NUMBER_WORDS,
        "numerals": [str(n) for n in range(2 * 99 + 1)],
        "verbs": VERBS,
        "moods": MOODS + list(MOOD_SYNONYMS.values()),
        "review subjects": SUBJECTS + SHIFT_SUBJECTS,
        "review aspects": ASPECTS + SHIFT_ASPECTS,
        "areas": [area for area in AREAS if " " not in area],
        "prices": PRICES,
        "ratings": RATINGS,
    }
    return {name: list(words) for name, words in categories.items()}


def plural(animal: str) -> str:
    """'cat' -> 'cats', 'mouse' -> 'mice'."""
    return IRREGULAR_PLURALS.get(animal, animal + "s")


def with_article(phrase: str) -> str:
    """'red fox' -> 'a red fox', 'orange owl' -> 'an orange owl'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _spelling_words() -> list[str]:
    """Vocabulary words that make good spelling / unscrambling exercises.

    Only words of 4 to 10 letters, and no two words that are anagrams of each other
    (otherwise a scrambled word would have two correct answers).
    """
    categories = [
        POSITIVE_ADJECTIVES, NEGATIVE_ADJECTIVES, ANIMALS, COLOURS, FOODS, PLACES, NAMES,
        NUMBER_WORDS, VERBS, MOODS, list(MOOD_SYNONYMS.values()), SUBJECTS, ASPECTS,
        SHIFT_SUBJECTS, SHIFT_ASPECTS, " ".join(AREAS).split(), PRICES, RATINGS,
    ]
    words = sorted({w for category in categories for w in category if 4 <= len(w) <= 10})
    by_letters: dict[str, list[str]] = {}
    for word in words:
        by_letters.setdefault("".join(sorted(word)), []).append(word)
    return [w for w in words if len(by_letters["".join(sorted(w))]) == 1]


SPELLING_WORDS = _spelling_words()

# ---------------------------------------------------------------------------------------
# Task formats: prompt strings shared with minipeft.tasks (the answer follows the prompt)
# ---------------------------------------------------------------------------------------


def sentiment_prompt(review: str) -> str:
    return f"review : {review} sentiment :"


def paraphrase_prompt(first: str, second: str) -> str:
    return f"sentence one : {first} sentence two : {second} same :"


def table2text_prompt(record: dict[str, str]) -> str:
    return " ".join(f"{key}[{value}]" for key, value in record.items()) + " :"


def unscramble_prompt(scrambled: str) -> str:
    # No space around "=": the answer is the bare word, glued to the prompt ("asinoc=casino").
    return f"{scrambled}="


def arithmetic_prompt(a: int, b: int) -> str:
    return f"{a} + {b} ="


# ---------------------------------------------------------------------------------------
# Reviews (sentiment)
# ---------------------------------------------------------------------------------------


def _adjective(rng: random.Random, positive: bool) -> str:
    """A sentiment adjective, sometimes strengthened ("really great")."""
    word = rng.choice(POSITIVE_ADJECTIVES if positive else NEGATIVE_ADJECTIVES)
    if rng.random() < 0.3:
        word = rng.choice(INTENSIFIERS) + " " + word
    return word


def make_review(rng: random.Random, positive: bool, shift: bool = False) -> str:
    """One review whose sentiment is `positive`; `shift` picks the shifted-domain subjects.

    Four shapes, so that the label is not just "is there a positive word":
      plain     the movie was lovely .
      and       the movie was lovely and the plot was clever .
      but       the plot was dull but the movie was lovely .   (the clause after "but" decides)
      not       the movie was not boring .                     (negation flips the adjective)
    """
    subject = rng.choice(SHIFT_SUBJECTS if shift else SUBJECTS)
    aspect = rng.choice(SHIFT_ASPECTS if shift else ASPECTS)
    shape = rng.choices(["plain", "and", "but", "not"], weights=[2, 3, 3, 2])[0]
    if shape == "plain":
        return f"the {subject} was {_adjective(rng, positive)} ."
    if shape == "and":
        return (f"the {subject} was {_adjective(rng, positive)} and "
                f"the {aspect} was {_adjective(rng, positive)} .")
    if shape == "but":
        return (f"the {aspect} was {_adjective(rng, not positive)} but "
                f"the {subject} was {_adjective(rng, positive)} .")
    flipped = rng.choice(NEGATIVE_ADJECTIVES if positive else POSITIVE_ADJECTIVES)
    return f"the {subject} was not {flipped} ."


def _review_document(rng: random.Random) -> list[str]:
    """Reviews with a verdict line: the concept of the sentiment task, not its format."""
    lines = []
    for _ in range(rng.randint(2, 4)):
        positive = rng.random() < 0.5
        shift = rng.random() < SHIFT_REVIEW_FRACTION
        verdict = "good" if positive else "bad"
        lines.append(f"review : {make_review(rng, positive, shift)} verdict : {verdict}")
    return lines


# ---------------------------------------------------------------------------------------
# Sentence pairs (paraphrase)
# ---------------------------------------------------------------------------------------
# A *scene* is a small dict of facts; a *rendering* turns it into a sentence. Two renderings
# of the same scene are paraphrases; rendering a scene with some facts changed is not.


def _random_scene(rng: random.Random, kind: str | None = None) -> dict[str, str]:
    """A scene of the given kind ("action", "mood" or "count"), or of a random kind."""
    kind = kind or rng.choice(["action", "mood", "count"])
    if kind == "action":
        animal, other = rng.sample(ANIMALS, 2)
        return {"kind": kind, "colour": rng.choice(COLOURS), "animal": animal,
                "verb": rng.choice(VERBS), "other": other, "place": rng.choice(PLACES)}
    if kind == "mood":
        return {"kind": kind, "colour": rng.choice(COLOURS), "animal": rng.choice(ANIMALS),
                "mood": rng.choice(MOODS)}
    return {"kind": kind, "name": rng.choice(NAMES), "number": str(rng.randint(2, 12)),
            "colour": rng.choice(COLOURS), "animal": rng.choice(ANIMALS)}


def _render(scene: dict[str, str], style: int) -> str:
    """Sentence for `scene`; the styles (0 or 1, plus 2 for actions) mean the same thing."""
    if scene["kind"] == "action":
        agent = f"the {scene['colour']} {scene['animal']}"
        if style == 0:
            return f"{agent} {scene['verb']} the {scene['other']} in the {scene['place']} ."
        if style == 1:
            return f"in the {scene['place']} , {agent} {scene['verb']} the {scene['other']} ."
        return f"the {scene['other']} was {scene['verb']} by {agent} in the {scene['place']} ."
    if scene["kind"] == "mood":
        mood = scene["mood"] if style == 0 else MOOD_SYNONYMS[scene["mood"]]
        return f"the {scene['colour']} {scene['animal']} is {mood} ."
    number = int(scene["number"])
    verb, count = ("has", NUMBER_WORDS[number]) if style == 0 else ("owns", str(number))
    return f"{scene['name']} {verb} {count} {scene['colour']} {plural(scene['animal'])} ."


def _styles(scene: dict[str, str]) -> list[int]:
    return [0, 1, 2] if scene["kind"] == "action" else [0, 1]


# The values each fact of a scene can take ("other" is an action's second animal).
FACT_VALUES = {"colour": COLOURS, "animal": ANIMALS, "other": ANIMALS, "place": PLACES,
               "mood": MOODS, "name": NAMES, "number": [str(n) for n in range(2, 13)]}


def _facts(scene: dict[str, str]) -> list[str]:
    """The keys of `scene` that can be given another value (FACT_VALUES), in scene order."""
    return [key for key in scene if key in FACT_VALUES]


def _replace_fact(rng: random.Random, scene: dict[str, str], fact: str) -> None:
    """Give `scene[fact]` a new value (in place); an action's two animals stay different."""
    taken = {scene[fact]}
    if fact in ("animal", "other") and scene["kind"] == "action":
        taken |= {scene["animal"], scene["other"]}
    scene[fact] = rng.choice([value for value in FACT_VALUES[fact] if value not in taken])


def _change_facts(rng: random.Random, scene: dict[str, str], count: int) -> dict[str, str]:
    """A copy of `scene` with `count` of its facts replaced, so that it means something else.

    MRPC's non-paraphrases range from one changed detail to a different event, so a "no"
    pair disagrees on one to three facts. A single change may also be an action's swapped
    roles ("the fox chased the duck" vs "the duck chased the fox").
    """
    changed = dict(scene)
    facts = _facts(scene)
    if count == 1 and scene["kind"] == "action" and rng.random() < 1 / (len(facts) + 1):
        changed["animal"], changed["other"] = scene["other"], scene["animal"]
        return changed
    for fact in rng.sample(facts, min(count, len(facts))):
        _replace_fact(rng, changed, fact)
    return changed


def make_paraphrase_pair(rng: random.Random, same: bool) -> tuple[str, str]:
    """Two sentences that mean the same (`same=True`) or differ in one to three facts.

    Both cases use two different renderings when they can, so that a surface difference
    ("has three" vs "owns 3") never gives the answer away.
    """
    scene = _random_scene(rng)
    first_style, second_style = rng.sample(_styles(scene), 2)
    second_scene = scene if same else _change_facts(rng, scene, rng.randint(1, 3))
    return _render(scene, first_style), _render(second_scene, second_style)


def _corrected_restatement(rng: random.Random, scene: dict[str, str], style: int) -> str:
    """A restatement with one wrong word, corrected right after it: "... owls ( no , frogs ) ."

    The wrong and the right rendering differ in exactly one word, so predicting the
    correction means comparing the restatement with the sentence it restates, slot by slot.
    """
    wrong_scene = dict(scene)  # one fact replaced (never a swap, which changes two words)
    _replace_fact(rng, wrong_scene, rng.choice(_facts(scene)))
    wrong = _render(wrong_scene, style).split()
    right = _render(scene, style).split()
    slot = next(i for i, (w, r) in enumerate(zip(wrong, right)) if w != r)
    return " ".join(wrong[:slot + 1] + ["(", "no", ",", right[slot], ")"] + wrong[slot + 1:])


def _paraphrase_line(rng: random.Random) -> str:
    """One line of a paraphrase document; the four shapes are equally likely.

        labelled     sentence one : A sentence two : B same : yes|no   (the task's format)
        echo         A again , A
        restatement  A in other words , A'                             (A' means the same)
        corrected    A in other words , A' with one word wrong ( no , right word )

    Echoes and restatements give the model a reason to look back and copy from its context
    (the induction heads of Olsson et al. 2022); corrections make it notice the one slot
    where two sentences disagree. Both are what the paraphrase task asks for.
    """
    shape = rng.choice(["labelled", "echo", "restatement", "corrected"])
    if shape == "labelled":
        same = rng.random() < 0.5
        first, second = make_paraphrase_pair(rng, same)
        return paraphrase_prompt(first, second) + (" yes" if same else " no")
    scene = _random_scene(rng)
    if shape == "echo":
        sentence = _render(scene, rng.choice(_styles(scene)))
        return f"{sentence} again , {sentence}"
    first_style, second_style = rng.sample(_styles(scene), 2)
    if shape == "restatement":
        restated = _render(scene, second_style)
    else:
        restated = _corrected_restatement(rng, scene, second_style)
    return f"{_render(scene, first_style)} in other words , {restated}"


def _paraphrase_document(rng: random.Random) -> list[str]:
    return [_paraphrase_line(rng) for _ in range(rng.randint(4, 6))]


# ---------------------------------------------------------------------------------------
# Restaurant records (table to text)
# ---------------------------------------------------------------------------------------


def make_restaurant(rng: random.Random) -> tuple[dict[str, str], str]:
    """A record such as {name: the golden fox, food: pizza, ...} and a sentence saying it.

    Like the E2E data set, the same record can be said in more than one way (two sentence
    templates), which is why the task is scored with BLEU rather than exact match.
    """
    record = {"name": f"the {rng.choice(COLOURS)} {rng.choice(ANIMALS)}",
              "food": rng.choice(FOODS), "area": rng.choice(AREAS),
              "price": rng.choice(PRICES)}
    if rng.random() < 0.5:
        record["rating"] = rng.choice(RATINGS)
    name, food, area, price = record["name"], record["food"], record["area"], record["price"]
    first_template = rng.random() < 0.5
    if "rating" not in record:
        if first_template:
            return record, f"{name} serves {price} {food} in the {area} area ."
        return record, f"in the {area} area , {name} serves {price} {food} ."
    rating = with_article(record["rating"] + " rating")
    if first_template:
        return record, f"{name} serves {price} {food} in the {area} area and has {rating} ."
    place = with_article(f"{price} {food} place")
    return record, f"{name} is {place} in the {area} area with {rating} ."


def _table_document(rng: random.Random) -> list[str]:
    lines = []
    for _ in range(rng.randint(2, 3)):
        record, sentence = make_restaurant(rng)
        lines.append(table2text_prompt(record) + " " + sentence)
    return lines


# ---------------------------------------------------------------------------------------
# Spelling and scrambled words (unscramble)
# ---------------------------------------------------------------------------------------


def scramble(rng: random.Random, word: str) -> str:
    """The letters of `word` in a random order that is not the word itself."""
    letters = list(word)
    while "".join(letters) == word:
        rng.shuffle(letters)
    return "".join(letters)


def _spelling_document(rng: random.Random) -> list[str]:
    lines = []
    for _ in range(rng.randint(3, 5)):
        word = rng.choice(SPELLING_WORDS)
        if rng.random() < 0.5:
            lines.append(f"{word}=" + " ".join(word))  # casino=c a s i n o
        else:
            lines.append(unscramble_prompt(scramble(rng, word)) + word)  # asinoc=casino
    return lines


# ---------------------------------------------------------------------------------------
# Sums (arithmetic)
# ---------------------------------------------------------------------------------------


def is_held_out_sum(a: int, b: int) -> bool:
    """About 10% of the 10,000 sums are kept out of the corpus and the task's training split.

    The arithmetic task's validation and test sums come only from this set, so a model that
    scores well on them has learned to add, not memorised the answers during pretraining.
    """
    return (31 * a + 17 * b) % 10 == 0


def make_sum(rng: random.Random, held_out: bool = False) -> tuple[int, int]:
    """Two numbers from 0 to 99 to be added, from the held-out set or from the rest."""
    while True:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if is_held_out_sum(a, b) == held_out:
            return a, b


def _sums_document(rng: random.Random) -> list[str]:
    lines = []
    for _ in range(rng.randint(3, 6)):
        a, b = make_sum(rng)
        lines.append(f"{arithmetic_prompt(a, b)} {a + b}")
    return lines


# ---------------------------------------------------------------------------------------
# Stories (general text)
# ---------------------------------------------------------------------------------------


def _simple_sentence(rng: random.Random) -> str:
    kind = rng.choice(["action", "eat", "count", "mood", "opinion"])
    if kind == "action":
        return _render(_random_scene(rng, "action"), rng.choice([0, 1, 2]))
    if kind == "eat":
        who = rng.choice([rng.choice(NAMES), f"the {rng.choice(COLOURS)} {rng.choice(ANIMALS)}"])
        return f"{who} ate the {rng.choice(FOODS)} in the {rng.choice(PLACES)} ."
    if kind == "count":
        number = rng.randint(2, 12)
        return (f"{rng.choice(NAMES)} saw {NUMBER_WORDS[number]} {plural(rng.choice(ANIMALS))} "
                f"near the {rng.choice(PLACES)} .")
    if kind == "opinion":
        # The sentiment task's label words, used as ordinary words (never after a review).
        name, food = rng.choice(NAMES), rng.choice(FOODS)
        if rng.random() < 0.5:
            return f"{name} liked the {food} and felt positive about it ."
        return f"{name} disliked the {food} and felt negative about it ."
    return _render(_random_scene(rng, "mood"), rng.choice([0, 1]))


def _short_story(rng: random.Random) -> list[str]:
    """A few connected sentences about one person and one animal."""
    name, animal, colour = rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(COLOURS)
    place, food, mood = rng.choice(PLACES), rng.choice(FOODS), rng.choice(MOODS)
    return [
        f"{name} went to the {place} .",
        f"there {name} saw {with_article(colour + ' ' + animal)} .",
        f"the {animal} was {mood} , so {name} gave it some {food} .",
        f"it ate the {food} and it was {rng.choice(['happy', 'glad', 'calm', 'relaxed'])} .",
    ]


def _story_document(rng: random.Random) -> list[str]:
    if rng.random() < 0.5:
        return _short_story(rng)
    return [_simple_sentence(rng) for _ in range(rng.randint(3, 5))]


# ---------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------
DOCUMENT_KINDS = {
    "story": _story_document,
    "review": _review_document,
    "paraphrase": _paraphrase_document,
    "table": _table_document,
    "spelling": _spelling_document,
    "sums": _sums_document,
}
# How often each kind is drawn, relative to the others. Paraphrase documents are drawn four
# times as often (4/9 of the corpus): learning to copy from the context is a phase change
# that comes only after enough repeated and restated sentences (measured on `small`: without
# restatements it still could not copy after 1,750 of 3,000 steps; with them it learns to copy
# between steps 1,000 and 1,250).
DOCUMENT_WEIGHTS = {"story": 1, "review": 1, "paraphrase": 4, "table": 1, "spelling": 1,
                    "sums": 1}


def generate_corpus(n_documents: int, seed: int = 0) -> list[str]:
    """`n_documents` documents (lines joined by newlines), kinds drawn by DOCUMENT_WEIGHTS."""
    rng = random.Random(seed)
    kinds = list(DOCUMENT_KINDS)
    weights = [DOCUMENT_WEIGHTS[kind] for kind in kinds]
    documents = []
    for _ in range(n_documents):
        make_document = DOCUMENT_KINDS[rng.choices(kinds, weights)[0]]
        documents.append("\n".join(make_document(rng)))
    return documents


def corpus_text(n_documents: int, seed: int = 0) -> str:
    """The whole corpus as one string; every document ends with END_OF_TEXT."""
    return "".join(doc + END_OF_TEXT for doc in generate_corpus(n_documents, seed))
