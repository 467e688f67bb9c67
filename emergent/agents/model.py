"""A decoder-only Transformer language model with a KV cache, in one file.

Shapes: B batch, T time (tokens in this call), S cached + new keys, C = d_model,
H heads, D = C // H head size, V vocabulary, L layers.

Two attention paths:
  * training / scoring of right-padded batches: plain causal SDPA (``is_causal=True``),
    which on CUDA dispatches to the flash kernel. Right padding sits after every real
    token, so it never leaks into the positions the loss reads.
  * generation: prompts of different lengths are *left*-padded so every row's next
    token lands in the same column; a boolean mask hides the padding keys and position
    ids restart at 0 at each row's first real token, so a left-padded row computes
    exactly what it would alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from emergent.envs.tokenizer import TOKENIZER

from .graph_replay import GraphReplay

POS_SCHEMES = ("learned", "rope", "none", "abacus", "coupled")
# positions from digits' places, for arithmetic prompts that end in '=' (``digit_places``):
# abacus (McLeish et al. 2024) adds a learned embedding of each digit's place and no other
# position; coupled (Cho et al. 2024) rotates queries and keys (RoPE) by the place, so an
# answer digit and the operand digits of its place sit at relative distance 0 at any length
PLACE_SCHEMES = ("abacus", "coupled")
_DIGIT_0, _DIGIT_9 = TOKENIZER.encode("0")[0], TOKENIZER.encode("9")[0]
_EQUALS = TOKENIZER.encode("=")[0]


@dataclass
class ModelConfig:
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    max_len: int = 64  # context length: prompt + completion, BOS and EOS included
    pos: str = "learned"  # learned | rope | none | abacus | coupled
    place_offset: int = 0  # abacus / coupled: training adds a random offset in [0, place_offset]
    # to each sequence's digit places, so places past training lengths are trained
    dropout: float = 0.0

    def validate(self) -> None:
        if self.pos not in POS_SCHEMES:
            raise ValueError(f"model.pos={self.pos!r} is not a positional scheme; choose one of {list(POS_SCHEMES)}")
        for key in ("n_layer", "n_head", "d_model", "max_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.n_head={self.n_head}")
        if self.pos in ("rope", "coupled") and (self.d_model // self.n_head) % 2:
            raise ValueError(f"model.pos={self.pos} needs an even head size (d_model / n_head)")
        if self.place_offset < 0 or (self.place_offset and self.pos not in PLACE_SCHEMES):
            raise ValueError(
                f"model.place_offset={self.place_offset} needs a value >= 0 and model.pos in "
                f"{list(PLACE_SCHEMES)} (it offsets digit places), not model.pos={self.pos}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must lie in [0, 1), got {self.dropout}")


class KVCache:
    """Keys and values of every layer for positions [0, length); allocated on first write.

    k, v: [L, B, H, S_max, D]
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int) -> None:
        self.shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length = 0
        self.place: torch.Tensor | None = None  # [B] the last written token's digit place (abacus, coupled)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, H, T, D] at [length, length+T); return the whole buffers [B, H, S_max, D].

        Attention always runs over all S_max slots (the mask hides the unwritten ones):
        shapes stay fixed across decode steps, so attention kernels plan once per
        generate call instead of once per step (cuDNN's SDPA planning costs ~0.1 s per
        new shape), and the step is ready for CUDA graphs.
        """
        self._allocate(k)
        t0, T = self.length, k.shape[2]
        if t0 + T > self.shape[3]:
            raise ValueError(f"KV cache full: {t0}+{T} > {self.shape[3]}")
        self.k[layer, :, :, t0 : t0 + T] = k
        self.v[layer, :, :, t0 : t0 + T] = v
        return self.k[layer], self.v[layer]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` [b] (rows that finished generating are dropped)."""
        if self.k is not None:
            self.k, self.v = self.k[:, rows], self.v[:, rows]
        if self.place is not None:
            self.place = self.place[rows]
        self.shape = (self.shape[0], len(rows), *self.shape[2:])

    def _allocate(self, like: torch.Tensor) -> None:
        """The buffers, on the first write, in the dtype the layers compute in."""
        if self.k is None:
            self.k = torch.zeros(self.shape, dtype=like.dtype, device=like.device)
            self.v = torch.zeros_like(self.k)

    def advance(self, T: int) -> None:
        """``T`` tokens were written (``TransformerLM.hidden`` calls this after each forward)."""
        self.length += T


class StaticKVCache(KVCache):
    """A ``KVCache`` written at a position held in a device tensor, not a Python int.

    ``length`` is a 0-d long tensor that the caller sets before each forward (``fill_``),
    and ``advance`` leaves it alone: a decode step then reads no host value, so it can be
    captured once as a CUDA graph and replayed for every token (``DecodeStep``).
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, device) -> None:
        super().__init__(n_layer, batch, n_head, max_len, head_dim)
        self.length = torch.zeros((), dtype=torch.long, device=device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._allocate(k)
        at = self.length + torch.arange(k.shape[2], device=k.device)  # [T] positions written
        self.k[layer].index_copy_(2, at, k)
        self.v[layer].index_copy_(2, at, v)
        return self.k[layer], self.v[layer]

    def keep(self, rows: torch.Tensor) -> None:
        raise RuntimeError("a static cache keeps its batch: its buffers are what a captured graph reads")

    def advance(self, T: int) -> None:
        pass


class DecodeStep:
    """One token of decoding as a function of fixed buffers: ``(tok [B], pos [B], at) ->
    logits [B, V]`` for a ``StaticKVCache`` and a fixed key mask ``key_valid`` [B, S].

    On CUDA (``graph=True``) the step is replayed from a CUDA graph (``GraphReplay``: the first
    step runs eagerly on a side stream as the warm-up, the second is captured): one launch per
    token instead of a dozen kernels per layer, each waiting on the host, which is what bounds
    a small model's decode (L2 d128 runs ~30 kernels of microseconds per token). Elsewhere
    ``GraphReplay``'s eager twin runs the same arithmetic, which is how CPU tests check it.
    """

    def __init__(self, model: "TransformerLM", cache: StaticKVCache, key_valid: torch.Tensor, *, graph: bool) -> None:
        if graph and not key_valid.is_cuda:
            raise ValueError("a CUDA graph needs the model on CUDA")
        self.model, self.cache, self.key_valid = model, cache, key_valid
        B = key_valid.shape[0]
        self.tok = torch.zeros(B, 1, dtype=torch.long, device=key_valid.device)
        self.pos = torch.zeros(B, 1, dtype=torch.long, device=key_valid.device)
        self.graphs = GraphReplay(cuda=graph)

    def _run(self) -> torch.Tensor:
        return self.model(self.tok, self.pos, self.key_valid, self.cache)[:, -1]

    def __call__(self, tok: torch.Tensor, pos: torch.Tensor, at: int) -> torch.Tensor:
        self.tok.copy_(tok.view(-1, 1))
        self.pos.copy_(pos.view(-1, 1))
        self.cache.length.fill_(at)
        return self.graphs("step", self._run)


def digit_places(idx: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
    """Each digit's place in its number, 1 for the least significant, 0 for any other token:
    idx [B, T] token ids -> [B, T].

    Before a row's first '=' (the prompt's operands, most significant digit first) a place
    is counted from its number's right end; after it (the reversed answer, least significant
    first, written left to right) from its left end, so in both a digit's place is its
    significance: ``^123+45=`` -> 0 3 2 1 0 2 1 0, and its answer ``861$`` -> 1 2 3 0.
    After the '=' a place depends only on tokens before it: the answer stays causal.

    ``prev`` [B]: ``idx`` continues a sequence past its '=' whose last token had place
    ``prev`` (a KV-cached decode step): counting goes on from there.
    """
    B, T = idx.shape
    t = torch.arange(T, device=idx.device).expand(B, T)
    digit = (idx >= _DIGIT_0) & (idx <= _DIGIT_9)
    start = (-1 - prev)[:, None].expand(B, T) if prev is not None else torch.full_like(t, -1)
    left = t - torch.where(digit, start, t).cummax(1).values  # 1 + digits before, in its run
    if prev is not None:
        return torch.where(digit, left, 0)
    end = torch.where(digit, T, t).flip(1).cummin(1).values.flip(1)  # the next non-digit (T: none)
    right = end - t  # 1 + digits after, in its run
    after = (idx == _EQUALS).cumsum(1) > 0
    return torch.where(digit, torch.where(after, left, right), 0)


def rope_tables(max_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # [max_len, D/2]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x [B, H, T, D] by per-position angles cos/sin [B, 1, T, D/2]."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.d_model = cfg.n_head, cfg.d_model
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x, rope=None, mask=None, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # [B, H, S, D]
        p = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=False)
        self.down = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.d_model), CausalSelfAttention(cfg)
        self.ln2, self.mlp = nn.LayerNorm(cfg.d_model), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope=None, mask=None, cache=None, layer=0):
        x = x + self.drop(self.attn(self.ln1(x), rope, mask, cache, layer))
        return x + self.drop(self.mlp(self.ln2(x)))


class Generation(NamedTuple):
    tokens: torch.Tensor  # [B, N] generated ids (N = steps taken); PAD after a row's EOS
    lengths: torch.Tensor  # [B] completion length, EOS excluded
    finished: torch.Tensor  # [B] bool: the row emitted EOS (else it hit the token limit)
    logprobs: torch.Tensor  # [B, N] log-prob of each generated token under the sampling policy; 0 after EOS


def pad_left(prompts: Sequence[np.ndarray | Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> (ids [B, T], valid [B, T]) left-padded to the longest prompt."""
    lengths = np.array([len(p) for p in prompts])
    T = int(lengths.max())
    ids = np.full((len(prompts), T), pad_id, dtype=np.int64)
    valid = np.arange(T)[None, :] >= (T - lengths)[:, None]
    ids[valid] = np.concatenate([np.asarray(p, dtype=np.int64) for p in prompts])
    return torch.from_numpy(ids).to(device), torch.from_numpy(valid).to(device)


class TransformerLM(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        cfg.validate()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.wte = nn.Embedding(vocab_size, cfg.d_model)
        # abacus: the table is indexed by place (0: not a digit), offsets included
        positions = cfg.max_len + cfg.place_offset
        self.wpe = nn.Embedding(positions, cfg.d_model) if cfg.pos in ("learned", "abacus") else None
        if cfg.pos in ("rope", "coupled"):
            cos, sin = rope_tables(positions, cfg.d_model // cfg.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)

    # -- accounting -------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, context: int, *, backward: bool) -> float:
        """Matmul FLOPs per token at a given attended context (PaLM appendix B).

        forward: 2 * (weights in matmuls) + 4 * L * C * context (QK^T and AV).
        Embedding lookups are free; the tied LM head is a real matmul and counts.
        A backward pass costs twice the forward.
        """
        c = self.cfg
        matmul_params = c.n_layer * 12 * c.d_model**2 + c.d_model * self.vocab_size
        fwd = 2 * matmul_params + 4 * c.n_layer * c.d_model * context
        return 3 * fwd if backward else fwd

    # -- forward ----------------------------------------------------------------------
    def forward(
        self,
        idx: torch.Tensor,  # [B, T] token ids
        pos: torch.Tensor | None = None,  # [B, T] position ids; default 0..T-1 after the cache
        key_valid: torch.Tensor | None = None,  # [B, S] bool: keys a query may see (padding is False)
        cache: KVCache | None = None,
    ) -> torch.Tensor:  # -> logits [B, T, V]
        return self.lm_head(self.hidden(idx, pos, key_valid, cache))

    def hidden(
        self,
        idx,
        pos=None,
        key_valid=None,
        cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
        place: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final-norm hidden states [B, T, C]; ``forward`` puts the LM head on them.

        ``attn_mask`` [B, 1, T, S] bool, with a cache whose ``update`` returns S keys: which
        keys each query sees, when that is not the causal order (a search's tree of states,
        ``TreeKV``); it replaces the mask built from ``key_valid``. ``place`` [B, T]: the
        tokens' digit places (abacus, coupled) when ``idx`` alone does not give them (a tree's
        states, each one token past its parent); else they come from ``idx`` and the cache."""
        B, T = idx.shape
        t0 = cache.length if cache is not None else 0
        if self.cfg.pos in PLACE_SCHEMES:  # positions are the digits' places
            pos = self._places(idx, cache) if place is None else place
        elif pos is None:
            pos = (torch.arange(T, device=idx.device) + t0).expand(B, T)
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(pos)
        rope = None
        if self.cfg.pos in ("rope", "coupled"):
            rope = (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])  # [B, 1, T, D/2]
        mask = attn_mask
        if mask is None and (key_valid is not None or cache is not None):
            S = cache.shape[3] if cache is not None else T  # keys attended: all cache slots, or the input
            q_at = (torch.arange(T, device=idx.device) + t0)[:, None]  # t0: an int, or a static cache's tensor
            k_at = torch.arange(S, device=idx.device)[None, :]
            causal = k_at <= q_at  # [T, S]; also hides cache slots not written yet
            valid = key_valid[:, None, None, :S] if key_valid is not None else True
            # A padding query sees only itself: no row of the mask is empty, so no NaN
            # ever enters the cache (0 * NaN would poison the real rows).
            mask = (causal & valid) | (k_at == q_at)  # [B, 1, T, S]
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, cache, i)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)

    def _places(self, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """Digit places of ``idx`` [B, T] (after the cache's tokens), offset in training."""
        prev = cache.place if cache is not None else None
        place = digit_places(idx, prev)
        if cache is not None:  # in place: a static cache's buffers are what a CUDA graph reads
            if prev is None:
                cache.place = place[:, -1].clone()
            else:
                cache.place.copy_(place[:, -1])
        if self.training and self.cfg.place_offset:  # one offset per sequence, digits only
            offset = torch.randint(0, self.cfg.place_offset + 1, (idx.shape[0], 1), device=idx.device)
            place = torch.where(place > 0, place + offset, place)
        return place

    def new_cache(self, batch: int, max_len: int | None = None, *, static: bool = False) -> KVCache:
        c = self.cfg
        dims = (c.n_layer, batch, c.n_head, max_len or c.max_len, c.d_model // c.n_head)
        return StaticKVCache(*dims, device=self.wte.weight.device) if static else KVCache(*dims)

    # -- generation -------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[np.ndarray | Sequence[int]],
        max_new_tokens: int,
        *,
        eos_id: int,
        pad_id: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        compact: bool | None = None,
        static: bool = False,
    ) -> Generation:
        """Continue each prompt until it emits EOS or ``max_new_tokens`` tokens (capped by
        the context length). temperature 0 is greedy. ``use_cache=False`` recomputes the
        whole prefix each step — the reference the cache is tested against.

        ``compact`` drops finished rows from the batch (and the cache) whenever a quarter
        of it has finished. Sampled traces are short on average but the batch runs until
        its longest row ends (countdown: mean 17 new tokens, 45 steps), so on CPU most of
        a fixed batch's decode work is spent on rows that already wrote EOS. Default: on
        for CPU; off for CUDA, where fixed shapes keep kernel plans (and CUDA graphs) valid.

        ``static``: every decode step is one ``DecodeStep`` over fixed buffers (a
        ``StaticKVCache`` written at a device-held position), captured as a CUDA graph on
        CUDA and replayed per token; on CPU it runs eagerly (the same tokens). It needs the
        cache and a fixed batch (no ``compact``).
        """
        device = self.wte.weight.device
        if static and (compact or not use_cache):
            raise ValueError("static decoding needs use_cache=True and compact=False")
        compact = device.type == "cpu" and not static if compact is None else compact
        ids, valid = pad_left(prompts, pad_id, device)  # [B, Tp]
        B, Tp = ids.shape
        N = min(max_new_tokens, self.cfg.max_len - Tp)
        if N < 1:
            raise ValueError(f"prompts of {Tp} tokens leave no room in the context of {self.cfg.max_len}")
        prompt_len = valid.sum(1)  # [B]
        pos = (valid.cumsum(1) - 1).clamp(min=0)  # [B, Tp]
        out = torch.full((B, N), pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros(B, N, dtype=upcast(self.wte.weight).dtype, device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        key_valid = torch.cat([valid, torch.ones(B, N, dtype=torch.bool, device=device)], 1)  # [B, Tp+N]

        # the batch's rows still in the computation: a slice (views, no gathers) until the
        # first compaction, then an index tensor [b]
        rows: slice | torch.Tensor = slice(None)
        cache = self.new_cache(B, Tp + N, static=static) if use_cache else None
        logits = self(ids, pos, key_valid, cache)[:, -1]  # [b, V]
        step = DecodeStep(self, cache, key_valid, graph=device.type == "cuda") if static else None
        for n in range(N):
            tok, lp = sample_next(upcast(logits), temperature, top_k, generator)  # [b]
            ended = done[rows]
            tok = torch.where(ended, pad_id, tok)
            out[rows, n] = tok
            logprobs[rows, n] = torch.where(ended, 0.0, lp)
            lengths[rows] += (~ended & (tok != eos_id)).long()
            ended = ended | (tok == eos_id)
            done[rows] = ended
            if n == N - 1 or bool(ended.all()):
                break
            if compact and 4 * int(ended.sum()) >= len(ended):
                live = (~ended).nonzero().squeeze(1)
                rows, tok = torch.arange(B, device=device)[rows][live], tok[live]
                if cache is not None:
                    cache.keep(live)
            if step is not None:
                logits = step(tok, prompt_len + n, Tp + n)
            elif use_cache:
                logits = self(tok[:, None], (prompt_len[rows] + n)[:, None], key_valid[rows], cache)[:, -1]
            else:
                seq = torch.cat([ids[rows], out[rows, : n + 1]], 1)
                seq_pos = torch.cat([pos[rows], prompt_len[rows, None] + torch.arange(n + 1, device=device)], 1)
                logits = self(seq, seq_pos, key_valid[rows, : Tp + n + 1])[:, -1]
        return Generation(out[:, : n + 1], lengths, done, logprobs[:, : n + 1])  # trim unused columns


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision activations (bf16 autocast) in fp32 for losses, sampling and values;
    fp32 and fp64 as they are, so a run in fp64 (the golden tests) stays in fp64 throughout."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, generator=None):
    """logits [B, V] -> (token [B], its log-prob [B] under the sampling distribution)."""
    if temperature <= 0.0:
        tok = logits.argmax(-1)
        return tok, F.log_softmax(logits, -1).gather(1, tok[:, None]).squeeze(1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    logp = F.log_softmax(logits, -1)
    probs = logp.exp()
    if generator is not None and generator.device != probs.device:
        # a CPU generator keeps runs reproducible across devices; draw on its device
        tok = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(probs.device)
    else:
        tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return tok, logp.gather(1, tok[:, None]).squeeze(1)
