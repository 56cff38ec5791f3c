"""Fixtures every test file may use: a tiny random GPT and a batch of random tokens.

The builders live in helpers.py (files that need several models or seeds call them
directly); the fixtures give the usual case, a fresh model and one fixed batch.
"""
import pytest

import helpers


@pytest.fixture
def tiny_gpt():
    """A fresh randomly initialised 2-block GPT (seed 0), helpers.VOCAB tokens, width D."""
    return helpers.tiny_gpt()


@pytest.fixture
def tokens():
    """A (3, 12) batch of token ids below helpers.VOCAB, the same in every test."""
    return helpers.tokens()
