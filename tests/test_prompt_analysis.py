"""Prompt-interpretability helpers, each checked against an independent computation:
brute-force loops over the vocabulary, itertools pairs, numpy's eigen-decomposition of the
covariance, Python sets, and the closed-form mean of the permutation baseline."""
from itertools import combinations

import numpy as np
import pytest
import torch

from minipeft.corpus import word_categories
from minipeft.model import GPT, GPTConfig
from minipeft.prompt_analysis import (UNCATEGORISED, VocabularyPCA, cluster_score, jaccard,
                                      nearest_token_ids, neighbour_agreement,
                                      pairwise_agreement, prompt_drift,
                                      same_category_fraction, token_categories,
                                      token_embeddings)
from minipeft.tokenizer import load_tokenizer

V, D = 40, 8


def table(seed: int = 0, vocab: int = V, width: int = D) -> torch.Tensor:
    return torch.randn(vocab, width, generator=torch.Generator().manual_seed(seed))


def brute_force_neighbours(vector: torch.Tensor, E: torch.Tensor, k: int) -> list[int]:
    cosines = [float(vector @ e / (vector.norm() * e.norm())) for e in E]
    return sorted(range(len(E)), key=lambda i: -cosines[i])[:k]


def test_nearest_token_ids_match_a_brute_force_search():
    E, vectors = table(0), table(1, vocab=3)
    ids = nearest_token_ids(vectors, E, k=4)
    assert ids.tolist() == [brute_force_neighbours(v, E, 4) for v in vectors]


def test_token_embeddings_reads_through_a_peft_wrapper():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, d_model=D))
    wrapper = torch.nn.Module()
    wrapper.base_model = gpt
    assert torch.equal(token_embeddings(wrapper), gpt.tok_emb.weight)


# ---- drift -------------------------------------------------------------------------------
def test_drift_by_hand():
    E = table(0)
    start = E[[3, 7]].clone()
    small_step = 0.01 * table(2, vocab=1)[0]
    end = torch.stack([start[0] + small_step, E[11] * 5.0])  # 0 stays, 1 jumps to token 11
    drift = prompt_drift(start, end, E)
    for i in range(2):
        cos = float(start[i] @ end[i] / (start[i].norm() * end[i].norm()))
        assert drift.cosine[i] == pytest.approx(cos, abs=1e-6)
        assert drift.distance[i] == pytest.approx(float(((end[i] - start[i]) ** 2).sum().sqrt()),
                                                  rel=1e-6)
    assert drift.start_token == [3, 7]
    assert drift.end_token == [3, 11]
    assert drift.kept == [True, False]


def test_drift_needs_prompts_of_one_shape():
    E = table(0)
    with pytest.raises(ValueError, match="same shape"):
        prompt_drift(E[:2], E[:3], E)
    with pytest.raises(ValueError, match="as wide as the token embeddings"):
        prompt_drift(torch.zeros(2, D + 1), torch.zeros(2, D + 1), E)


# ---- categories and the cluster score ----------------------------------------------------
def test_token_categories_map_single_token_spellings_of_the_corpus_words():
    tokenizer = load_tokenizer()
    labels, names = token_categories(tokenizer)
    categories = word_categories()
    assert names == list(categories)
    expected = {}
    for index, words in enumerate(categories.values()):
        for word in words:
            for spelling in (" " + word, word):
                ids = tokenizer.encode(spelling)
                if len(ids) == 1:
                    expected[ids[0]] = index
    found = {i: int(c) for i, c in enumerate(labels.tolist()) if c != UNCATEGORISED}
    assert found == expected
    cat = tokenizer.encode(" cat")
    assert len(cat) == 1 and names[labels[cat[0]]] == "animals"


def test_corpus_categories_are_disjoint():
    words = [w for ws in word_categories().values() for w in ws]
    assert len(words) == len(set(words))


def test_a_word_in_two_categories_is_rejected():
    with pytest.raises(ValueError, match="two categories"):
        token_categories(load_tokenizer(), {"a": ["cat"], "b": ["cat"]})


def test_same_category_fraction_counts_pairs_like_itertools():
    labels = torch.tensor([0, 0, 1, 1, 1, UNCATEGORISED, UNCATEGORISED, 2])
    rows = torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5], [5, 6, 7, 0], [0, 2, 4, 7]])
    fractions = same_category_fraction(rows, labels)
    for row, fraction in zip(rows.tolist(), fractions.tolist()):
        pairs = list(combinations(row, 2))
        same = sum(labels[a] == labels[b] and labels[a] != UNCATEGORISED for a, b in pairs)
        assert fraction == pytest.approx(same / len(pairs))
    assert fractions.tolist() == pytest.approx([2 / 6, 3 / 6, 0.0, 1 / 6])


def test_cluster_score_of_vectors_inside_one_category_beats_every_permutation():
    """Embeddings in tight groups: a vector at a group's centre has its group as neighbours.
    The permutation mean must equal the closed form Σ_c n_c (n_c − 1) / (V (V − 1))."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, D, generator=g) * 5
    group_of = torch.arange(V) % 4  # 4 groups of 10 tokens
    E = centres[group_of] + 0.1 * torch.randn(V, D, generator=g)
    labels = group_of.clone()
    labels[group_of == 3] = UNCATEGORISED  # one group is no category
    score = cluster_score(centres[:3], E, labels, k=5, n_permutations=300, seed=1)
    assert score.observed == 1.0
    assert score.p_value == pytest.approx(1 / 301)
    sizes = torch.bincount(labels[labels != UNCATEGORISED]).double()
    closed_form = float((sizes * (sizes - 1)).sum() / (V * (V - 1)))
    assert score.null_mean == pytest.approx(closed_form, abs=4 * score.null_std / 300 ** 0.5
                                            + 1e-3)
    uncategorised = cluster_score(centres[3:], E, labels, k=5, n_permutations=50)
    assert uncategorised.observed == 0.0 and uncategorised.p_value == 1.0


def test_cluster_score_rejects_bad_arguments():
    E = table(0)
    with pytest.raises(ValueError, match="one category per token"):
        cluster_score(E[:2], E, torch.zeros(V - 1, dtype=torch.long))
    with pytest.raises(ValueError, match="n_permutations"):
        cluster_score(E[:2], E, torch.zeros(V, dtype=torch.long), n_permutations=0)
    with pytest.raises(ValueError, match="k must be"):
        cluster_score(E[:2], E, torch.zeros(V, dtype=torch.long), k=V + 1)
    with pytest.raises(ValueError, match="k ≥ 2"):
        cluster_score(E[:2], E, torch.zeros(V, dtype=torch.long), k=1)


# ---- PCA ---------------------------------------------------------------------------------
def test_pca_matches_the_eigenvectors_of_the_covariance():
    E = table(3) * torch.linspace(0.2, 3.0, D)  # distinct variances per direction
    pca = VocabularyPCA(E, n_components=2)
    X = E.double().numpy()
    centred = X - X.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(values)[::-1][:2]
    for row, column in zip(pca.components.numpy(), vectors[:, order].T):
        assert abs(float(row @ column)) == pytest.approx(1.0, abs=1e-9)  # same axis
        assert row[np.argmax(np.abs(row))] > 0  # the documented sign rule
    assert pca.explained_variance_ratio == pytest.approx(
        (values[order] / values.sum()).tolist(), rel=1e-9)
    points = table(4, vocab=5)
    expected = (points.double().numpy() - X.mean(axis=0)) @ pca.components.numpy().T
    np.testing.assert_allclose(pca(points).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_pca_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_components"):
        VocabularyPCA(table(0), n_components=D + 1)
    with pytest.raises(ValueError, match="to project"):
        VocabularyPCA(table(0))(torch.zeros(2, D + 1))


# ---- agreement across seeds --------------------------------------------------------------
def test_neighbour_agreement_is_the_jaccard_of_brute_force_neighbour_sets():
    E = table(0)
    a, b = table(5, vocab=3), table(6, vocab=3)
    b[0] = a[0] * 2.0  # same direction: identical neighbours
    agreement = neighbour_agreement(a, b, E, k=4)
    sets_a = [set(brute_force_neighbours(v, E, 4)) for v in a]
    sets_b = [set(brute_force_neighbours(v, E, 4)) for v in b]
    expected = [len(x & y) / len(x | y) for x, y in zip(sets_a, sets_b)]
    assert agreement.per_vector == pytest.approx(expected)
    assert agreement.per_vector[0] == 1.0
    union_a, union_b = set().union(*sets_a), set().union(*sets_b)
    assert agreement.whole_prompt == pytest.approx(len(union_a & union_b) / len(union_a | union_b))
    pairs = pairwise_agreement([a, b, a], E, k=4)
    assert len(pairs) == 3 and pairs[1].whole_prompt == 1.0  # (a, a)


def test_agreement_rejects_mismatched_prompts_and_empty_sets():
    E = table(0)
    with pytest.raises(ValueError, match="same length"):
        neighbour_agreement(E[:2], E[:3], E)
    with pytest.raises(ValueError, match="at least two"):
        pairwise_agreement([E[:2]], E)
    with pytest.raises(ValueError, match="undefined"):
        jaccard(set(), set())
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
