"""Byte-level BPE (byte-pair encoding), trained from scratch on our toy corpus.

A language model reads integers, so text must become a list of token ids. BPE, the scheme
of GPT-2, starts from the 256 possible bytes and learns *merges* from a corpus:

    tokens(w) = bytes of w                      for every chunk w of the corpus
    repeat until the vocabulary is full:
        (a, b) = the adjacent pair that occurs most often, counting each chunk w freq(w) times
        new id  = 256 + (number of merges so far);   bytes(new) = bytes(a) + bytes(b)
        replace every adjacent "a b" by "new" in every chunk

Frequent words end up as single tokens (" happy", " fox"), rare strings stay as smaller
pieces, and because the 256 bytes are always in the vocabulary *any* string can be
encoded and decoded back exactly: emoji, accents, scrambled letters ("asinoc").

Before BPE, text is pre-split into chunks the way GPT-2 does it (a leading space belongs to
the following word; words, single digits, punctuation and whitespace are separate chunks).
Merges never cross a chunk boundary, so " happy" is one token wherever it appears, and
digits stay single tokens so the model can learn to add digit by digit. The special
document separator `<|endoftext|>` is cut out before all this and gets its own id, eos_id.
"""
from __future__ import annotations

import functools
import heapq
import json
import operator
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable
from pathlib import Path

from minipeft.corpus import END_OF_TEXT, generate_corpus
from minipeft.files import atomic_write_text
from minipeft.paths import TOKENIZER_PATH, DataFileError

# GPT-2's pre-tokenizer, written for Python's `re` ([^\W\d_] means "a letter").
CHUNK_PATTERN = re.compile(
    r""" ?[^\W\d_]+"""     # a word, with the space in front of it: " happy"
    r"""| ?\d"""           # ONE digit (with its space): "47" -> "4", "7"
    r"""| ?(?:[^\s\w]|_)+"""  # a run of punctuation or symbols: " .", "[", " 😀"
    r"""|\s+(?!\S)"""      # whitespace, except the last space before a word (it joins the word)
    r"""|\s+"""            # any remaining whitespace
)
N_BYTES = 256
# Number of documents the shipped tokenizer is trained on: enough that every corpus word
# is frequent enough to become a token; training still takes only seconds.
TRAINING_DOCUMENTS = 4000
# Encoded chunks are remembered, since the same words come back again and again; only short
# chunks (words, numbers, punctuation) and only this many of them, so memory stays bounded
# whatever text is encoded.
CACHED_CHUNK_LENGTH = 50  # characters
CACHE_SIZE = 10_000  # chunks


def pre_split(text: str) -> list[str]:
    """Cut text into the chunks BPE works inside; joining them gives back `text`."""
    return CHUNK_PATTERN.findall(text)


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every adjacent occurrence of `pair` in `ids` by `new_id` (left to right)."""
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def apply_merges(symbols: list, rank: dict[tuple, int],
                 join: Callable[[Hashable, Hashable], Hashable]) -> list:
    """Encode one chunk with learned merges: repeatedly take the adjacent pair with the lowest
    rank and replace every occurrence of it (left to right) by `join(a, b)`, until no adjacent
    pair has a rank. This is how BPE segments new text (Sennrich, Haddow & Birch, 2016,
    Section 3.2), on bytes as in GPT-2 (Radford et al., 2019, Section 2.2).

    Rescanning the chunk for the best pair after every merge costs O(n²) on an n-symbol chunk
    (over a minute for 200,000 letters). Instead the symbols form a linked list and every
    adjacent pair that has a rank waits in a heap ordered by (rank, position); a merge only
    creates the two pairs with its neighbours. All occurrences of one rank are popped together and merged
    before the new pairs go in, exactly as one rescanning pass would. O(n log n) in all.
    """
    symbols = list(symbols)
    n = len(symbols)
    after = list(range(1, n + 1))  # after[i]: position of the next live symbol (n: none)
    before = list(range(-1, n - 1))  # before[i]: position of the previous one (-1: none)
    heap = [(rank[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in rank]
    heapq.heapify(heap)

    def rank_at(i: int) -> int | None:
        """Rank of the pair that starts at live position i, None if it has none."""
        j = after[i]
        return rank.get((symbols[i], symbols[j])) if j < n else None

    while heap:
        best = heap[0][0]
        positions = []  # every place the best pair was seen, left to right
        while heap and heap[0][0] == best:
            positions.append(heapq.heappop(heap)[1])
        merged = []
        for i in positions:
            # Skip entries made stale by an earlier merge (a symbol was absorbed or changed).
            if symbols[i] is None or rank_at(i) != best:
                continue
            j = after[i]
            symbols[i], symbols[j] = join(symbols[i], symbols[j]), None
            after[i] = after[j]
            if after[j] < n:
                before[after[j]] = i
            merged.append(i)
        # The merged symbols form new pairs with their neighbours.
        starts = {before[i] for i in merged if before[i] >= 0} | set(merged)
        for i in sorted(starts):
            if symbols[i] is not None and (new_rank := rank_at(i)) is not None:
                heapq.heappush(heap, (new_rank, i))
    return [symbol for symbol in symbols if symbol is not None]


def learn_merges(texts: list[str], n_merges: int) -> list[tuple[int, int]]:
    """Learn up to `n_merges` BPE merges from `texts` (fewer if no pair is left to merge).

    We work on the table of *unique* chunks with their counts, so a chunk seen 10,000 times
    costs as much as one seen once. After each merge only the chunks that contained the
    merged pair are re-counted (`where` remembers them), which makes training take seconds.
    Ties between equally frequent pairs go to the pair with the smallest ids, so the result
    is the same on every run.
    """
    chunk_counts = Counter(chunk for text in texts for piece in text.split(END_OF_TEXT)
                           for chunk in pre_split(piece))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())

    pair_counts: Counter[tuple[int, int]] = Counter()
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> chunks containing it
    for index, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            where[pair].add(index)

    merges = []
    for new_id in range(N_BYTES, N_BYTES + n_merges):
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merges.append(best)
        for index in where.pop(best):
            word, freq = words[index], freqs[index]
            # Take the chunk's old pairs out of the counts, merge, put its new pairs in.
            for pair in zip(word, word[1:]):
                pair_counts[pair] -= freq
                if pair_counts[pair] == 0:
                    del pair_counts[pair]
            word = merge_pair(word, best, new_id)
            words[index] = word
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
                where[pair].add(index)
    return merges


class BPETokenizer:
    """Byte-level BPE: ids 0-255 are bytes, then one id per merge, then eos_id last."""

    def __init__(self, merges: list[tuple[int, int]]):
        self.merges = [tuple(pair) for pair in merges]
        # rank[pair] = the id the pair merges into; a lower id was learned earlier.
        self.rank = {pair: N_BYTES + i for i, pair in enumerate(self.merges)}
        self.token_bytes = [bytes([b]) for b in range(N_BYTES)]
        for a, b in self.merges:
            self.token_bytes.append(self.token_bytes[a] + self.token_bytes[b])
        self.eos_id = N_BYTES + len(self.merges)
        self.token_bytes.append(END_OF_TEXT.encode("utf-8"))
        self._encode_short_chunk = functools.lru_cache(maxsize=CACHE_SIZE)(self._merge_chunk)

    @classmethod
    def train(cls, texts: list[str], vocab_size: int = 2048) -> BPETokenizer:
        """Learn a tokenizer with at most `vocab_size` tokens (256 bytes + merges + eos)."""
        if vocab_size < N_BYTES + 1:
            raise ValueError(f"vocab_size must be at least {N_BYTES + 1} (bytes + eos)")
        return cls(learn_merges(texts, vocab_size - N_BYTES - 1))

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def __len__(self) -> int:
        return self.vocab_size

    def _merge_chunk(self, chunk: str) -> tuple[int, ...]:
        """Apply the learned merges to one chunk, earliest-learned first (as in training)."""
        return tuple(apply_merges(list(chunk.encode("utf-8")), self.rank,
                                  join=lambda a, b: self.rank[(a, b)]))

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        if len(chunk) <= CACHED_CHUNK_LENGTH:
            return self._encode_short_chunk(chunk)
        return self._merge_chunk(chunk)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; each `<|endoftext|>` becomes eos_id."""
        ids: list[int] = []
        for i, piece in enumerate(text.split(END_OF_TEXT)):
            if i > 0:
                ids.append(self.eos_id)
            for chunk in pre_split(piece):
                ids.extend(self._encode_chunk(chunk))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`. Byte sequences that are not valid UTF-8 (possible in a model's
        output, which can stop in the middle of a character) show up as '�'."""
        return b"".join(self.token_bytes[check_token_id(i, self.vocab_size)]
                        for i in ids).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """Readable text of one token, e.g. ' happy' (for nearest-neighbour tables)."""
        token = self.token_bytes[check_token_id(token_id, self.vocab_size)]
        return token.decode("utf-8", errors="replace")

    def save(self, path: str | Path) -> None:
        """Write the merges as JSON, one per line: [a, b, "text of the merged token"].

        The text is only there so a human can read the file; `load` checks it matches.
        """
        lines = [json.dumps([a, b, self.token_text(N_BYTES + i)], ensure_ascii=False)
                 for i, (a, b) in enumerate(self.merges)]
        atomic_write_text(
            path,
            "{\n"
            '  "type": "byte-level BPE",\n'
            f'  "special_tokens": {json.dumps({END_OF_TEXT: self.eos_id})},\n'
            '  "merges": [\n    ' + ",\n    ".join(lines) + "\n  ]\n"
            "}\n",
        )

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer written by `save`; a missing or broken file raises DataFileError."""
        path = Path(path)
        if not path.is_file():
            raise DataFileError(path, "tokenizer file not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            merges = [(int(a), int(b)) for a, b, _ in data["merges"]]
            texts = [text for _, _, text in data["merges"]]
            special = data["special_tokens"]
        except (ValueError, KeyError, TypeError) as error:
            raise DataFileError(path, f"not a valid tokenizer file ({error})") from None
        # A merge may only use ids that exist before it.
        if any(not (0 <= a < N_BYTES + i and 0 <= b < N_BYTES + i)
               for i, (a, b) in enumerate(merges)):
            raise DataFileError(path, "a merge refers to a token that does not exist yet")
        tokenizer = cls(merges)
        if special != {END_OF_TEXT: tokenizer.eos_id} or texts != [
                tokenizer.token_text(N_BYTES + i) for i in range(len(merges))]:
            raise DataFileError(path, "the tokens do not match the merges (edited by hand?)")
        return tokenizer


def check_token_id(token_id, vocab_size: int) -> int:
    """`token_id` as an int if it names a token, else one error with the valid range.

    Python would read a negative id as counting from the end of the vocabulary and return
    a wrong token without complaint, so the range is checked here.
    """
    try:
        if isinstance(token_id, bool):
            raise TypeError
        index = operator.index(token_id)  # int, NumPy integer or one-element integer tensor
    except TypeError:
        raise TypeError(f"token id {token_id!r} is not an integer; token ids are integers in "
                        f"[0, {vocab_size})") from None
    if not 0 <= index < vocab_size:
        raise ValueError(f"token id {index} is outside the vocabulary: valid ids are 0 to "
                         f"{vocab_size - 1}. Decode with the tokenizer the ids came from.")
    return index


def build_tokenizer(path: str | Path = TOKENIZER_PATH, vocab_size: int = 2048) -> BPETokenizer:
    """Train the shipped tokenizer on the seed-0 corpus and save it to `path`."""
    tokenizer = BPETokenizer.train(generate_corpus(TRAINING_DOCUMENTS, seed=0), vocab_size)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(path)
    return tokenizer


def load_tokenizer(path: str | Path | None = None) -> BPETokenizer:
    """The shipped tokenizer (data/tokenizer.json), or the one saved at `path`."""
    return BPETokenizer.load(TOKENIZER_PATH if path is None else path)
