"""Tokenizer: codes, START column, padding, ambiguous bases and long sequences reported."""

from __future__ import annotations

import numpy as np
import pytest

from aam.data.tokenizer import MASK, PAD, START, VOCAB_SIZE, token_lengths, tokenize
from aam.errors import InputError


def test_codes_start_and_padding() -> None:
    tokens, lengths, report = tokenize(["ACGT", "ggu", "A"], max_bp=6)
    assert tokens.dtype == np.uint8 and tokens.shape == (3, 7)
    assert tokens[0].tolist() == [START, 1, 2, 3, 4, PAD, PAD]
    assert tokens[1].tolist() == [START, 3, 3, 4, PAD, PAD, PAD]
    assert tokens[2].tolist() == [START, 1, 0, 0, 0, 0, 0]
    assert lengths.tolist() == [4, 3, 1]
    assert token_lengths(tokens).tolist() == [5, 4, 2]
    assert report.n_ambiguous_sequences == 0 and report.n_truncated == 0
    assert VOCAB_SIZE == 7


def test_ambiguous_bases_are_mask_and_reported() -> None:
    seqs = ["ACNNT", "ACGT", "RYA"]
    tokens, lengths, report = tokenize(seqs, max_bp=5, ids=["f1", "f2", "f3"])
    assert tokens[0].tolist() == [START, 1, 2, MASK, MASK, 4]
    assert tokens[2].tolist() == [START, MASK, MASK, 1, 0, 0]
    assert lengths.tolist() == [5, 4, 3]
    assert report.n_ambiguous_sequences == 2
    assert report.n_ambiguous_bases == 4
    assert report.ambiguous_ids == ["f1", "f3"]
    assert any("ambiguous" in m for m in report.messages())


def test_long_sequences_truncated_with_report() -> None:
    seqs = ["A" * 10, "C" * 3, "G" * 12]
    tokens, lengths, report = tokenize(seqs, max_bp=8, ids=["a", "b", "c"])
    assert tokens.shape == (3, 9)
    assert (tokens[0, 1:] == 1).all() and (tokens[2, 1:] == 3).all()
    assert lengths.tolist() == [8, 3, 8]
    assert report.n_truncated == 2 and report.truncated_ids == ["a", "c"] and report.longest == 12
    assert "truncated" in report.messages()[0]


def test_invalid_character_is_input_error() -> None:
    with pytest.raises(InputError, match="'-'"):
        tokenize(["ACGT", "AC-GT"], max_bp=10)


def test_vectorised_matches_reference_loop() -> None:
    rng = np.random.default_rng(0)
    alphabet = np.array(list("ACGTN"))
    seqs = ["".join(rng.choice(alphabet, size=rng.integers(1, 30))) for _ in range(200)]
    tokens, lengths, _ = tokenize(seqs, max_bp=20)
    code = {"A": 1, "C": 2, "G": 3, "T": 4, "N": MASK}
    for s, row, n in zip(seqs, tokens, lengths, strict=True):
        expect = [START] + [code[c] for c in s[:20]]
        assert row[: len(expect)].tolist() == expect
        assert (row[len(expect) :] == PAD).all()
        assert n == min(len(s), 20)
