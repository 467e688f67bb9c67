"""One character-level tokenizer shared by every task.

The vocabulary is fixed (it never depends on data), so a checkpoint trained on one
task can be evaluated on another and ids mean the same thing everywhere. The three
special tokens are given printable characters of their own so that *every* id
sequence decodes to a string and encodes back to the same ids: a completion that
emits PAD or BOS in the middle of an answer is visibly wrong, never silently dropped.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

PAD, BOS, EOS = 0, 1, 2
SPECIALS = "_^$"  # PAD, BOS, EOS as characters
# digits, arithmetic, separators; ">" announces the final answer after a scratchpad.
CHARS = "0123456789+-*/=(),;:>|"
ANSWER_SEP = ">"
STEP_SEP = ","  # between the steps of a scratchpad


class CharTokenizer:
    """Fixed vocabulary: ``SPECIALS + CHARS``; id == index in that string."""

    def __init__(self) -> None:
        self.alphabet = SPECIALS + CHARS
        self.vocab_size = len(self.alphabet)
        self.pad_id, self.bos_id, self.eos_id = PAD, BOS, EOS
        # byte -> id lookup table; -1 marks bytes outside the vocabulary.
        self._lut = np.full(256, -1, dtype=np.int64)
        for i, ch in enumerate(self.alphabet):
            self._lut[ord(ch)] = i
        self._chars = np.array(list(self.alphabet))

    def encode(self, text: str) -> np.ndarray:
        """str -> int64 ids [len(text)]; raises ValueError naming unknown characters."""
        raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        ids = self._lut[raw]
        if (ids < 0).any() or len(raw) != len(text):
            bad = sorted({c for c in text if c not in self.alphabet})
            raise ValueError(f"characters {bad!r} are not in the vocabulary {self.alphabet!r}")
        return ids

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {arr.min()}..{arr.max()}")
        return "".join(self._chars[arr].tolist())

    def encode_prompts(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """Each prompt as the model sees it: BOS + its ids."""
        return [np.concatenate([[self.bos_id], self.encode(p)]) for p in prompts]

    def decode_spans(self, ids: np.ndarray, starts: Sequence[int], ends: Sequence[int]) -> list[str]:
        """Rows of ids [M, L] -> the text of each row's [start, end), a final EOS dropped."""
        ids = np.asarray(ids, dtype=np.int64)
        ends = [e - 1 if e > s and ids[r, e - 1] == self.eos_id else e for r, (s, e) in enumerate(zip(starts, ends))]
        chars = self._chars[ids]
        return ["".join(row[s:e].tolist()) for row, s, e in zip(chars, starts, ends)]

    def decode_completions(self, ids: np.ndarray, lengths: Sequence[int] | np.ndarray) -> list[str]:
        """Rows of generated ids [B, T] -> strings, each cut at its length (EOS excluded)."""
        chars = self._chars[np.asarray(ids, dtype=np.int64)]
        return ["".join(row[:n].tolist()) for row, n in zip(chars, lengths)]


TOKENIZER = CharTokenizer()
