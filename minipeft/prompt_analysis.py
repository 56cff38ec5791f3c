"""Reading learned soft prompts: drift, word-category clusters, a 2-D map, seed agreement.

Lester, Al-Rfou & Constant (2021, §7, "Interpretability") read each learned prompt vector
through its nearest vocabulary tokens (`minipeft.analysis.nearest_tokens`) and report two
things: read as a token sequence a prompt makes little sense, yet the neighbours of a vector
tend to form a semantic cluster, and class-label-initialised vectors often keep their label
word as nearest neighbour. The functions here turn those observations into numbers:

* `prompt_drift` — how far each vector moved from its initialisation, and whether its
  nearest token is still the one it started at;
* `cluster_score` — how often two of a vector's k nearest tokens share a word category of
  the corpus, against a permutation baseline, with a p-value;
* `VocabularyPCA` — a 2-D projection fitted on the token embeddings, to draw prompts among
  words;
* `neighbour_agreement` — do prompts trained with different seeds have the same neighbours?

All of them take the token embedding table E (V, d) of the frozen model
(`token_embeddings(model)`); cosine similarity is cos(p, e) = p·e / (‖p‖ ‖e‖).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F

# The nearest-token primitives live beside analysis.nearest_tokens; token_embeddings is
# re-exported, so `from minipeft.prompt_analysis import token_embeddings` keeps working.
from minipeft.analysis import (check_k, check_vectors, cosine_to_vocabulary,  # noqa: F401
                               token_embeddings)
from minipeft.corpus import word_categories

UNCATEGORISED = -1  # category index of a token that is no word of the corpus' categories


def nearest_token_ids(vectors: torch.Tensor, embedding: torch.Tensor, k: int = 5
                      ) -> torch.Tensor:
    """Ids of the k tokens most cosine-similar to each vector, most similar first: (n, k)."""
    check_k(k, embedding.shape[0])
    return cosine_to_vocabulary(vectors, embedding).topk(k, dim=1).indices.cpu()


# ---- drift from the initialisation -------------------------------------------------------


@dataclass
class PromptDrift:
    """Per prompt vector i (each a list of n numbers):

    cosine:      cos(P₀[i], P[i]), 1 = the direction did not change
    distance:    ‖P[i] − P₀[i]‖₂
    start_token: id of the token nearest to P₀[i] (its init token for label/vocab starts)
    end_token:   id of the token nearest to P[i]
    kept:        end_token == start_token
    """

    cosine: list[float]
    distance: list[float]
    start_token: list[int]
    end_token: list[int]

    @property
    def kept(self) -> list[bool]:
        return [a == b for a, b in zip(self.start_token, self.end_token)]


def prompt_drift(initial: torch.Tensor, learned: torch.Tensor, embedding: torch.Tensor
                 ) -> PromptDrift:
    """How far each learned vector P[i] moved from its start P₀[i] (both (n, d))."""
    initial = check_vectors(initial, embedding, "initial")
    learned = check_vectors(learned, embedding, "learned")
    if initial.shape != learned.shape:
        raise ValueError(f"initial {tuple(initial.shape)} and learned {tuple(learned.shape)} "
                         "prompts must have the same shape (the same prompt before and after "
                         "training)")
    return PromptDrift(
        cosine=F.cosine_similarity(initial, learned, dim=1).tolist(),
        distance=(learned - initial).norm(dim=1).tolist(),
        start_token=nearest_token_ids(initial, embedding, 1)[:, 0].tolist(),
        end_token=nearest_token_ids(learned, embedding, 1)[:, 0].tolist(),
    )


# ---- word-category clusters ---------------------------------------------------------------


def token_categories(tokenizer, categories: dict[str, list[str]] | None = None
                     ) -> tuple[torch.Tensor, list[str]]:
    """Category index of every token id (UNCATEGORISED for the rest), and the category names.

    A word counts through each of its single-token spellings, " cat" and "cat"; a word the
    tokenizer splits into pieces has no token of its own and is left out. Default
    categories: the corpus' own (`minipeft.corpus.word_categories`).
    """
    categories = word_categories() if categories is None else categories
    labels = torch.full((tokenizer.vocab_size,), UNCATEGORISED, dtype=torch.long)
    for index, words in enumerate(categories.values()):
        for word in words:
            for spelling in (" " + word, word):
                ids = tokenizer.encode(spelling)
                if len(ids) != 1:
                    continue
                if labels[ids[0]] not in (UNCATEGORISED, index):
                    raise ValueError(f"token {spelling!r} is in two categories; give each "
                                     "word one category")
                labels[ids[0]] = index
    return labels, list(categories)


def same_category_fraction(neighbour_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each row of k token ids: the fraction of its k(k−1)/2 pairs in one category.

    Pairs with an uncategorised token never count. (n, k) ids → (n,) fractions.
    """
    if neighbour_ids.dim() != 2 or neighbour_ids.shape[1] < 2:
        raise ValueError(f"need (n, k) token ids with k ≥ 2 to form pairs, got shape "
                         f"{tuple(neighbour_ids.shape)}")
    k = neighbour_ids.shape[1]
    c = labels[neighbour_ids]  # (n, k) category of each neighbour
    same = (c[:, :, None] == c[:, None, :]) & (c[:, :, None] != UNCATEGORISED)  # (n, k, k)
    upper = torch.ones(k, k, dtype=torch.bool, device=c.device).triu(diagonal=1)  # pairs i < j
    return (same & upper).sum(dim=(1, 2)).float() / (k * (k - 1) / 2)


@dataclass
class ClusterScore:
    """observed: mean same-category pair fraction of the vectors' k nearest tokens;
    null_mean, null_std: the same statistic with the category labels shuffled over the
    vocabulary (random token sets); p_value: P(null ≥ observed), one-sided."""

    observed: float
    null_mean: float
    null_std: float
    p_value: float
    n_permutations: int


def cluster_score(vectors: torch.Tensor, embedding: torch.Tensor, labels: torch.Tensor,
                  k: int = 5, n_permutations: int = 1000, seed: int = 0) -> ClusterScore:
    """Do the k nearest tokens of each vector share a word category more than chance?

    Statistic: s = mean over vectors of the fraction of neighbour pairs in one category.
    Permutation baseline: shuffle the category labels over the V tokens (which keeps each
    category's size) and recompute s, n_permutations times; p = (1 + #{s_null ≥ s}) /
    (1 + n_permutations), the add-one estimate that is never 0 (Phipson & Smyth, 2010).
    """
    if labels.shape != (embedding.shape[0],):
        raise ValueError(f"labels must give one category per token, shape "
                         f"({embedding.shape[0]},), got {tuple(labels.shape)}")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) \
            or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive int, got {n_permutations!r}")
    ids = nearest_token_ids(vectors, embedding, k)
    labels = labels.cpu()
    observed = same_category_fraction(ids, labels).mean()
    generator = torch.Generator().manual_seed(seed)
    null = torch.stack([
        same_category_fraction(ids, labels[torch.randperm(len(labels), generator=generator)]
                               ).mean()
        for _ in range(n_permutations)])
    exceed = int((null >= observed).sum())
    return ClusterScore(observed=float(observed), null_mean=float(null.mean()),
                        null_std=float(null.std()),
                        p_value=(1 + exceed) / (1 + n_permutations),
                        n_permutations=n_permutations)


# ---- a 2-D map of the vocabulary ----------------------------------------------------------


class VocabularyPCA:
    """Principal components of the token embeddings: x ↦ (x − μ) Wᵀ.

    μ is the mean embedding and W (n_components, d) holds the top right singular vectors of
    the centred table E − μ; each component's sign is fixed so that its largest-magnitude
    entry is positive (an SVD leaves it arbitrary). Prompt vectors are projected with the
    same μ and W, so they are drawn in the words' own coordinates.
    """

    def __init__(self, embedding: torch.Tensor, n_components: int = 2):
        d = embedding.shape[1]
        if isinstance(n_components, bool) or not isinstance(n_components, int) \
                or not 1 <= n_components <= min(embedding.shape):
            raise ValueError(f"n_components must be an int in 1..{min(embedding.shape)}, got "
                             f"{n_components!r}")
        E = embedding.detach().double().cpu()
        self.mean = E.mean(dim=0)  # μ: (d,)
        _, s, Vh = torch.linalg.svd(E - self.mean, full_matrices=False)
        W = Vh[:n_components]  # (n_components, d)
        signs = torch.sign(W.gather(1, W.abs().argmax(dim=1, keepdim=True)))
        self.components = W * signs
        variance = s ** 2
        self.explained_variance_ratio = (variance[:n_components] / variance.sum()).tolist()
        self.width = d

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """(n, d) → (n, n_components) coordinates."""
        if vectors.dim() != 2 or vectors.shape[1] != self.width:
            raise ValueError(f"vectors must be (n, {self.width}) to project, got shape "
                             f"{tuple(vectors.shape)}")
        return ((vectors.detach().double().cpu() - self.mean) @ self.components.T).float()


# ---- agreement across seeds ---------------------------------------------------------------


def jaccard(a: set, b: set) -> float:
    """|A ∩ B| / |A ∪ B|: 1 for equal sets, 0 for disjoint ones."""
    if not a and not b:
        raise ValueError("the Jaccard index of two empty sets is undefined")
    return len(a & b) / len(a | b)


@dataclass
class NeighbourAgreement:
    """per_vector[i]: Jaccard of the k-neighbour sets of vector i in prompt A and in prompt B
    (vectors matched by position); whole_prompt: Jaccard of the unions over all vectors."""

    per_vector: list[float]
    whole_prompt: float


def neighbour_agreement(prompt_a: torch.Tensor, prompt_b: torch.Tensor,
                        embedding: torch.Tensor, k: int = 5) -> NeighbourAgreement:
    """Do two prompts of the same length (e.g. two seeds) have the same nearest tokens?"""
    if prompt_a.shape != prompt_b.shape:
        raise ValueError(f"prompts of shapes {tuple(prompt_a.shape)} and "
                         f"{tuple(prompt_b.shape)}: matching vectors by position needs "
                         "prompts of the same length and width")
    sets_a = [set(row) for row in nearest_token_ids(prompt_a, embedding, k).tolist()]
    sets_b = [set(row) for row in nearest_token_ids(prompt_b, embedding, k).tolist()]
    return NeighbourAgreement(
        per_vector=[jaccard(a, b) for a, b in zip(sets_a, sets_b)],
        whole_prompt=jaccard(set().union(*sets_a), set().union(*sets_b)))


def pairwise_agreement(prompts: list[torch.Tensor], embedding: torch.Tensor, k: int = 5
                       ) -> list[NeighbourAgreement]:
    """neighbour_agreement of every pair of prompts (e.g. every pair of seeds), in order."""
    if len(prompts) < 2:
        raise ValueError(f"need at least two prompts to compare, got {len(prompts)}")
    return [neighbour_agreement(a, b, embedding, k) for a, b in combinations(prompts, 2)]
