"""Problems -> padded token batches for training (one vectorised encode per batch)."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from emergent.envs.tokenizer import CharTokenizer


class TokenBatch(NamedTuple):
    inputs: torch.Tensor  # [B, T] BOS + prompt + completion (right-padded with PAD)
    targets: torch.Tensor  # [B, T] inputs shifted left by one, EOS at the end of each row
    loss_mask: torch.Tensor  # [B, T] float: 1 where the target is a completion token or EOS

    def to(self, device) -> "TokenBatch":
        return TokenBatch(*(t.to(device, non_blocking=True) for t in self))

    @property
    def tokens(self) -> int:
        return self.inputs.numel()


def encode_batch(tok: CharTokenizer, prompts: Sequence[str], completions: Sequence[str], max_len: int) -> TokenBatch:
    """Rows ``BOS prompt completion EOS``; the loss covers ``completion EOS`` only."""
    lp = np.fromiter(map(len, prompts), dtype=np.int64, count=len(prompts))
    lc = np.fromiter(map(len, completions), dtype=np.int64, count=len(completions))
    seq_len = 1 + lp + lc + 1
    if seq_len.max() > max_len + 1:
        worst = int(seq_len.argmax())
        raise ValueError(
            f"example {prompts[worst] + completions[worst]!r} needs {int(seq_len[worst]) - 1} tokens of context "
            f"but model.max_len={max_len}; raise model.max_len or lower the difficulty"
        )
    body = tok.encode("".join(p + c for p, c in zip(prompts, completions)))  # all rows at once
    B, T = len(prompts), int(seq_len.max())
    seq = np.full((B, T), tok.pad_id, dtype=np.int64)
    starts = np.cumsum(lp + lc) - (lp + lc)
    rows = np.repeat(np.arange(B), lp + lc)
    cols = 1 + np.arange(len(body)) - np.repeat(starts, lp + lc)
    seq[:, 0] = tok.bos_id
    seq[rows, cols] = body
    seq[np.arange(B), seq_len - 1] = tok.eos_id
    # target position t predicts seq[t+1]; completion tokens sit at [1+lp, seq_len)
    t = np.arange(T - 1)[None, :]
    mask = (t + 1 >= (1 + lp)[:, None]) & (t + 1 < seq_len[:, None])
    return TokenBatch(
        torch.from_numpy(seq[:, :-1].copy()),
        torch.from_numpy(seq[:, 1:].copy()),
        torch.from_numpy(mask.astype(np.float32)),
    )
