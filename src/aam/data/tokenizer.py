"""Nucleotide tokenizer: ASV sequences -> uint8 token rows (START, bases, right padding).

Vocabulary: PAD=0 A=1 C=2 G=3 T=4 START=5 MASK=6 (VOCAB_SIZE=7). U is read as T, lower case as upper case.

Ambiguous IUPAC bases (N R Y S W K M B D H V) keep their position and are encoded as MASK (6), so the
model sees "unknown base here" and the sequence keeps its length; the report counts them per sequence.
Sequences longer than `max_bp` are truncated to `max_bp` bases, and the report says how many and which.
Any other character (gaps, digits, ...) is an InputError.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aam.errors import InputError

PAD, A, C, G, T, START, MASK = 0, 1, 2, 3, 4, 5, 6
VOCAB_SIZE = 7
AMBIGUOUS_BASES = "NRYSWKMBDHV"
VALID_BASES = "ACGTU" + AMBIGUOUS_BASES
_INVALID = 255
N_REPORT_IDS = 5

log = logging.getLogger("aam.data")


def _lookup_table() -> np.ndarray:
    lut = np.full(256, _INVALID, dtype=np.uint8)
    for ch, code in (("A", A), ("C", C), ("G", G), ("T", T), ("U", T)):
        lut[ord(ch)] = code
        lut[ord(ch.lower())] = code
    for ch in AMBIGUOUS_BASES:
        lut[ord(ch)] = MASK
        lut[ord(ch.lower())] = MASK
    return lut


LUT = _lookup_table()


@dataclass
class TokenReport:
    """What tokenization changed: ambiguous bases (encoded as MASK) and truncated sequences."""

    n_sequences: int
    max_bp: int
    n_ambiguous_sequences: int = 0
    n_ambiguous_bases: int = 0
    ambiguous_ids: list[str] = field(default_factory=list)  # first few
    n_truncated: int = 0
    truncated_ids: list[str] = field(default_factory=list)  # first few
    longest: int = 0

    def messages(self) -> list[str]:
        out = []
        if self.n_ambiguous_sequences:
            out.append(
                f"{self.n_ambiguous_sequences} of {self.n_sequences} sequences contain ambiguous IUPAC bases "
                f"({self.n_ambiguous_bases} bases in total, encoded as MASK), e.g. {', '.join(self.ambiguous_ids)}"
            )
        if self.n_truncated:
            out.append(
                f"{self.n_truncated} of {self.n_sequences} sequences are longer than max_bp={self.max_bp} "
                f"(longest {self.longest}) and were truncated to {self.max_bp} bases, e.g. "
                f"{', '.join(self.truncated_ids)}; raise --max-bp to keep them whole"
            )
        return out

    def log(self) -> None:
        for msg in self.messages():
            log.warning(msg)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _short(s: str, n: int = 24) -> str:
    return s if len(s) <= n else s[:n] + "..."


def tokenize(
    seqs: Sequence[str], max_bp: int, ids: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, TokenReport]:
    """Tokenize sequences into uint8 [n, max_bp + 1] (START in column 0, right-padded with PAD).

    Returns (tokens, lengths, report); `lengths` counts the bases kept (<= max_bp), so a row holds
    lengths + 1 non-PAD tokens. `ids` (default: the sequences) name sequences in the report and errors.
    """
    if max_bp < 1:
        raise InputError(f"max_bp must be at least 1 (got {max_bp}); pass a positive --max-bp")
    n = len(seqs)
    names = ids if ids is not None else seqs
    tokens = np.zeros((n, max_bp + 1), dtype=np.uint8)
    tokens[:, 0] = START
    report = TokenReport(n_sequences=n, max_bp=max_bp)
    if n == 0:
        return tokens, np.zeros(0, dtype=np.int64), report
    full_len = np.fromiter(map(len, seqs), dtype=np.int64, count=n)
    if (full_len == 0).any():
        r = int(np.flatnonzero(full_len == 0)[0])
        raise InputError(f"sequence {r} ({names[r]!r}) is empty; every feature needs a nucleotide sequence")
    if full_len.max() > max_bp:
        seqs = [x[:max_bp] for x in seqs]
    width = int(min(full_len.max(), max_bp))
    try:  # fixed-width byte strings, NUL padded: one C-level copy, no per-base Python work
        raw = np.array(seqs, dtype=f"S{width}").view(np.uint8).reshape(n, width)
    except UnicodeEncodeError:
        raw = np.array([x.encode("ascii", errors="replace") for x in seqs], dtype=f"S{width}")
        raw = raw.view(np.uint8).reshape(n, width)
    lengths = np.minimum(full_len, max_bp)
    codes = LUT[raw]
    inside = np.arange(width)[None, :] < lengths[:, None]
    bad = (codes == _INVALID) & inside
    if bad.any():
        r, c = np.argwhere(bad)[0]
        ch = chr(raw[r, c]) if raw[r, c] < 128 else "?"
        n_bad = int(bad.any(axis=1).sum())
        raise InputError(
            f"sequence {_short(str(names[r]))!r} has the character {ch!r} at position {c + 1} "
            f"({n_bad} sequence(s) have characters other than ACGTU/IUPAC); remove gaps and other symbols"
        )
    codes[~inside] = PAD
    tokens[:, 1 : width + 1] = codes

    amb = (codes == MASK).sum(axis=1)
    amb_rows = np.flatnonzero(amb)
    report.n_ambiguous_sequences = int(amb_rows.size)
    report.n_ambiguous_bases = int(amb.sum())
    report.ambiguous_ids = [_short(str(names[i])) for i in amb_rows[:N_REPORT_IDS]]
    long_rows = np.flatnonzero(full_len > max_bp)
    report.n_truncated = int(long_rows.size)
    report.truncated_ids = [_short(str(names[i])) for i in long_rows[:N_REPORT_IDS]]
    report.longest = int(full_len.max())
    return tokens, lengths, report


def token_lengths(tokens: np.ndarray) -> np.ndarray:
    """Number of non-PAD tokens per row (START included) of a right-padded token array."""
    nz = tokens != PAD
    width = tokens.shape[1]
    last = width - np.argmax(nz[:, ::-1], axis=1)
    return np.where(nz.any(axis=1), last, 0).astype(np.int64)
