"""Self-improvement learners: the policy learns from its own traces, never from gold ones.

What a learner gets about a training problem is its prompt, and a ``Verifier`` it may
call with completions to get exact-correctness scores. Gold traces and gold answers
never cross into this module. ``label_source=majority_vote`` does not call the verifier
at all.

  expert_iteration  sample N traces per problem, keep the best by the verifier, the
                    reward-and-objective network or a majority vote, and train on them by
                    maximum likelihood (STaR / ReST)
  policy_gradient   sample a group per problem; advantages = reward minus the group
                    mean (GRPO/RLOO), or minus the network's value of the prompt;
                    optional KL penalty to the starting policy
  alphazero         search-driven self-play: policy <- the search's improved policy
                    (visit distributions, or Gumbel MuZero's completed-Q policy) at the
                    moves it searched, value <- outcomes, replay of recent searched traces

All share ``Learner`` (AdamW, schedule, clipping, bf16) with the supervised learner, and
each iteration reports the FLOPs it spent, split into ledger parts.
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import numpy as np
import torch

from emergent.envs import TOKENIZER, extract_answer

from .data import encode_batch
from .learner import Learner, OptimConfig, autocast
from .model import ModelConfig, TransformerLM
from .reward_net import RewardNet, ValueBatch, auc, expected_calibration_error, value_loss
from .search import PolicyValueEvaluator, SearchConfig, output_completions, search, state_verifier

LABEL_SOURCES = ("verifier", "reward_net", "majority_vote")
REWARD_SOURCES = ("verifier", "reward_net")
BASELINES = ("group", "value")


REWARD_INITS = ("policy", "scratch")


@dataclass
class RewardNetConfig:
    # its context length and positional scheme are the policy's: it scores what the policy writes
    n_layer: Optional[int] = None    # None: the policy's
    n_head: Optional[int] = None
    d_model: Optional[int] = None
    # policy: start the trunk from the starting policy's weights (as RLHF reward models
    # start from the SFT model): its features already read the task's arithmetic, so the
    # judge needs few labelled traces. Needs the policy's size. scratch: random init.
    init: str = "policy"
    lr: float = 3e-4
    updates_per_iter: int = 2
    batch_size: int = 128            # labelled traces per update, drawn from the replay
    replay_size: int = 4096          # recent labelled traces kept for reward-net updates
    heldout_fraction: float = 0.2    # of each iteration's traces: scored, never trained on

    def model_config(self, policy: ModelConfig) -> ModelConfig:
        size = {k: getattr(self, k) if getattr(self, k) is not None else getattr(policy, k)
                for k in ("n_layer", "n_head", "d_model")}
        return ModelConfig(**size, max_len=policy.max_len, pos=policy.pos)

    def validate(self, policy: ModelConfig) -> None:
        if self.init not in REWARD_INITS:
            raise ValueError(f"reward.init={self.init!r} is not valid; choose one of {list(REWARD_INITS)}")
        mine = self.model_config(policy)
        if self.init == "policy" and (mine.n_layer, mine.n_head, mine.d_model) != (policy.n_layer, policy.n_head, policy.d_model):
            raise ValueError("reward.init=policy needs the policy's size: leave reward.n_layer / n_head / d_model "
                             "unset (null), or set reward.init=scratch")
        if self.updates_per_iter < 0 or self.batch_size < 1 or self.replay_size < 1:
            raise ValueError("reward.updates_per_iter must be >= 0, reward.batch_size and reward.replay_size >= 1")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError("reward.heldout_fraction must lie in [0, 1)")
        mine.validate()


@dataclass
class ImproveConfig:
    problems_per_iter: int = 32
    samples: int = 8                 # traces per problem (expert_iteration N, policy_gradient group)
    temperature: float = 1.0
    label_source: str = "verifier"   # expert_iteration: verifier | reward_net | majority_vote
    reward_source: str = "verifier"  # policy_gradient: verifier | reward_net
    baseline: str = "group"          # policy_gradient: group mean (GRPO/RLOO) | value (reward net)
    kl_coef: float = 0.0             # policy_gradient: KL(policy || starting policy) penalty
    replay_size: int = 2048          # expert_iteration / alphazero: traces kept for updates
    train_batch: int = 64            # expert_iteration / alphazero: traces per update
    updates_per_iter: int = 1        # policy steps per iteration (policy_gradient: clipped steps on one batch)
    clip_ratio: float = 0.2          # policy_gradient: PPO/GRPO clip of the probability ratio (acts from the 2nd step)
    init_from: Optional[str] = None  # a checkpoint to start from (e.g. a supervised run)

    def validate(self) -> None:
        for key, value, choices in (("label_source", self.label_source, LABEL_SOURCES),
                                    ("reward_source", self.reward_source, REWARD_SOURCES),
                                    ("baseline", self.baseline, BASELINES)):
            if value not in choices:
                raise ValueError(f"improve.{key}={value!r} is not valid; choose one of {list(choices)}")
        if self.problems_per_iter < 1 or self.samples < 1 or self.updates_per_iter < 1:
            raise ValueError("improve.problems_per_iter, improve.samples and improve.updates_per_iter must be >= 1")
        if self.temperature <= 0:
            raise ValueError("improve.temperature must be > 0 (sampling)")
        if not 0 < self.clip_ratio < 1:
            raise ValueError(f"improve.clip_ratio must lie in (0, 1), got {self.clip_ratio}")


class Verifier(Protocol):
    """Scores completions of this iteration's problems: rows index the problems."""

    def __call__(self, rows: np.ndarray, completions: Sequence[str]) -> np.ndarray: ...


# -- rollouts ---------------------------------------------------------------------------------

@dataclass
class Rollouts:
    rows: np.ndarray           # [R] problem index of each trace
    prompts: list[str]         # [R]
    completions: list[str]     # [R] EOS excluded
    finished: np.ndarray       # [R] bool: wrote EOS (else ran out of context)
    flops: float


@torch.no_grad()
def sample_rollouts(policy: TransformerLM, prompts: Sequence[str], samples: int, *, temperature: float,
                    generator: torch.Generator | None, device: torch.device) -> Rollouts:
    """``samples`` completions per prompt, all rows in one KV-cached generate call."""
    rows = np.repeat(np.arange(len(prompts)), samples)
    ids = TOKENIZER.encode_prompts(prompts)
    was = policy.training
    policy.eval()
    with autocast(device):
        gen = policy.generate([ids[r] for r in rows], policy.cfg.max_len, eos_id=TOKENIZER.eos_id,
                              pad_id=TOKENIZER.pad_id, temperature=temperature, generator=generator)
    policy.train(was)
    completions = TOKENIZER.decode_completions(gen.tokens.cpu().numpy(), gen.lengths.cpu().numpy())
    Tp, N = max(len(i) for i in ids), gen.tokens.shape[1]
    R = len(rows)
    # what ran: a prefill of R x Tp tokens, then N decode steps attending over Tp + N slots
    flops = policy.flops_per_token(Tp, backward=False) * R * Tp + policy.flops_per_token(Tp + N, backward=False) * R * N
    return Rollouts(rows, [prompts[r] for r in rows], completions, gen.finished.cpu().numpy(), flops)


def majority_labels(rows: np.ndarray, completions: Sequence[str]) -> np.ndarray:
    """1 where a trace's final answer is its problem's most common answer (ties: first seen)."""
    answers = [extract_answer(c) for c in completions]
    labels = np.zeros(len(rows))
    for r in np.unique(rows):
        idx = np.flatnonzero(rows == r)
        top = Counter(answers[i] for i in idx).most_common(1)[0][0]
        labels[idx] = [answers[i] == top for i in idx]
    return labels


def encode_values(prompts: Sequence[str], completions: Sequence[str], labels: np.ndarray, max_len: int) -> ValueBatch:
    """Rows ``BOS prompt completion EOS``, right-padded; train every state from the last
    prompt token (index len(prompt)) to the EOS (index len(prompt) + len(completion) + 1)."""
    b = encode_batch(TOKENIZER, prompts, completions, max_len)
    # BOS + the shifted targets = the whole row. A trace that filled the context never
    # wrote EOS: its final state is its last token, so the appended EOS is cut off.
    full = torch.cat([b.inputs[:, :1], b.targets], 1)[:, :max_len]
    lp = torch.tensor([len(p) for p in prompts])
    eos_at = (lp + torch.tensor([len(c) for c in completions]) + 1).clamp(max=max_len - 1)
    t = torch.arange(full.shape[1])[None, :]
    mask = ((t >= lp[:, None]) & (t <= eos_at[:, None])).float()
    return ValueBatch(full, mask, torch.as_tensor(labels, dtype=torch.float32))


# -- the reward-and-objective network's own trainer ------------------------------------------

class RewardTrainer(Learner):
    """BCE on verifier (or vote) outcomes of self-generated traces; held-out diagnostics."""

    def __init__(self, net: RewardNet, cfg: RewardNetConfig, total_steps: int, device: torch.device):
        super().__init__(net, OptimConfig(lr=cfg.lr, min_lr=cfg.lr, warmup_steps=0, weight_decay=0.1), total_steps, device)
        self.net, self.rcfg = net, cfg

    def update(self, batch: ValueBatch) -> dict:
        self.net.train()
        batch = batch.to(self.device)
        with autocast(self.device, self.mixed_precision):
            loss = value_loss(self.net, batch)
        self.apply(loss)
        B, T = batch.inputs.shape
        return {"loss": loss.detach(), "flops": self.net.flops_per_token(T, backward=True) * B * T}

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str], *, at_prompt: bool = False):
        """P(correct) of finished traces (or, ``at_prompt``, of the prompt states) -> ([R], flops)."""
        batch = encode_values(prompts, completions, np.zeros(len(prompts)), self.net.cfg.max_len).to(self.device)
        lp = torch.tensor([len(p) for p in prompts], device=self.device)
        lengths = lp + 1 if at_prompt else lp + batch.mask.sum(1).long()  # up to the prompt's end, or EOS
        self.net.eval()
        with autocast(self.device, self.mixed_precision):
            v = self.net.value_at(batch.inputs, lengths)
        B, T = batch.inputs.shape
        return v.float().cpu().numpy(), self.net.flops_per_token(T, backward=False) * B * T

    @staticmethod
    def diagnostics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {
            "auc": auc(probs, labels),
            "ece": expected_calibration_error(probs, labels),
            "verifier_disagreement": float(np.mean((probs >= 0.5) != (labels >= 0.5))) if len(probs) else float("nan"),
        }


def split_heldout(n: int, fraction: float, generator: np.random.Generator) -> np.ndarray:
    """Boolean mask [n]: True for traces held out of reward-net training."""
    return generator.random(n) < fraction


# -- experience: what collection hands to learning ----------------------------------------

@dataclass
class Experience:
    """One batch of self-generated traces, judged and scored: everything ``learn`` needs.

    ``collect`` writes it with the current weights and no parameter update; ``learn``
    consumes it. The local runtime calls both in turn; the Ray runtime calls ``collect``
    on trace workers and ``learn`` on the learner, with the same classes.
    """
    prompts: list[str]           # [P] this batch's problems
    rows: np.ndarray             # [R] problem index of each trace
    completions: list[str]       # [R] EOS excluded
    finished: np.ndarray         # [R] bool: wrote EOS
    labels: np.ndarray           # [R] verifier outcome (majority agreement under a vote)
    scores: np.ndarray           # [R] the signal the update uses: labels or the reward net's P(correct)
    heldout: np.ndarray          # [R] bool: never trained on by the reward net
    heldout_probs: np.ndarray    # [H] the reward net's P(correct) of the held-out traces
    flops: dict                  # ledger part -> FLOPs spent collecting (generate / search / reward)
    metrics: dict                # tags measured while collecting (e.g. train/sample_accuracy)
    baseline: Optional[np.ndarray] = None  # [P] policy_gradient value baseline: P(correct) at the prompt
    visits: Optional[list] = None          # alphazero: [R] visit distributions [moves, V] (CPU); 0 rows: not searched
    version: int = 0                       # weights version that wrote it (the Ray runtime's staleness)
    difficulties: Optional[np.ndarray] = None  # [P] set by the platform for its curriculum; learners never read it

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def accepted(self) -> np.ndarray:
        """[R] bool: finished and judged correct (score >= 0.5)."""
        return self.finished & (self.scores >= 0.5)

    @property
    def prompt_of(self) -> list[str]:
        return [self.prompts[r] for r in self.rows]


# -- the learners ------------------------------------------------------------------------------

class SelfImprover:
    """Shared machinery: the policy learner, the reward net and its trainer, the flops.

    One iteration is ``learn(collect(prompts, verifier))`` (``Experiment.train_step``).
    """

    def __init__(self, policy: TransformerLM, reward_net: RewardNet, optim: OptimConfig, rcfg: RewardNetConfig,
                 icfg: ImproveConfig, total_steps: int, device: torch.device, seed: int) -> None:
        icfg.validate()
        self.policy, self.reward_net, self.cfg, self.device = policy, reward_net, icfg, device
        self.learner = Learner(policy, optim, total_steps * icfg.updates_per_iter, device)
        self.reward = RewardTrainer(reward_net, rcfg, total_steps * rcfg.updates_per_iter, device)
        self.rcfg = rcfg
        self.reseed(seed)
        self.labelled: list[tuple[str, str, float]] = []  # reward-net replay, most recent last

    def reseed(self, seed: int, stream: int = 0) -> None:
        """Sampling and replay draws from ``seed``; ``stream`` separates trace workers."""
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + stream)  # CPU: reproducible
        self.np_rng = np.random.default_rng([seed, 7, stream])

    # -- collection (no parameter changes) ---------------------------------------------------
    def collect(self, prompts: Sequence[str], verifier: Verifier) -> Experience:
        raise NotImplementedError

    def _judge(self, prompts: Sequence[str], ro: Rollouts, verifier: Verifier, *, vote: bool, source: str) -> Experience:
        """Label sampled traces by the verifier (or, ``vote``, by majority vote, never
        calling it); score them by ``source`` (``verifier``: the labels, ``reward_net``:
        the network); score the held-out ones for the reward net's diagnostics."""
        flops = {"generate": ro.flops, "reward": 0.0}
        labels = majority_labels(ro.rows, ro.completions) if vote else verifier(ro.rows, ro.completions).astype(float)
        scores = labels
        if source == "reward_net":
            scores, f = self.reward.score(ro.prompts, ro.completions)
            flops["reward"] += f
        return self._experience(prompts, ro.rows, ro.completions, ro.finished, labels, scores, flops)

    def _experience(self, prompts, rows, completions, finished, labels, scores, flops, **extra) -> Experience:
        heldout = split_heldout(len(rows), self.rcfg.heldout_fraction, self.np_rng)
        held = np.flatnonzero(heldout)
        probs = np.zeros(0)
        if len(held):
            probs, f = self.reward.score([prompts[rows[i]] for i in held], [completions[i] for i in held])
            flops["reward"] = flops.get("reward", 0.0) + f
        return Experience(list(prompts), np.asarray(rows), list(completions), np.asarray(finished, dtype=bool),
                          np.asarray(labels, dtype=float), np.asarray(scores, dtype=float), heldout, probs, flops,
                          metrics={}, **extra)

    # -- learning ------------------------------------------------------------------------------
    def learn(self, exp: Experience) -> dict:
        raise NotImplementedError

    def train_reward(self, exp: Experience) -> dict:
        """Add the non-held-out traces to the reward net's replay and update it from there.
        Returns the FLOPs and the metrics (``_heldout``: the held-out probs and labels)."""
        out: dict = {"reward_flops": 0.0, "_heldout": (exp.heldout_probs, exp.labels[exp.heldout])}
        prompts = exp.prompt_of
        self.labelled += [(prompts[i], exp.completions[i], float(exp.labels[i])) for i in np.flatnonzero(~exp.heldout)]
        self.labelled = self.labelled[-self.rcfg.replay_size:]
        losses = []
        for _ in range(self.rcfg.updates_per_iter if self.labelled else 0):
            pick = self.np_rng.integers(len(self.labelled), size=min(self.rcfg.batch_size, len(self.labelled)))
            items = [self.labelled[i] for i in pick]
            batch = encode_values([it[0] for it in items], [it[1] for it in items],
                                  np.array([it[2] for it in items]), self.reward_net.cfg.max_len)
            m = self.reward.update(batch)
            out["reward_flops"] += m["flops"]
            losses.append(m["loss"])
        if losses:
            out["reward_net/loss"] = float(torch.stack(losses).mean())
        return out

    def ml_update(self, prompts: Sequence[str], completions: Sequence[str]) -> dict:
        """One maximum-likelihood step on chosen traces (completion tokens only)."""
        from .supervised import completion_nll

        batch = encode_batch(TOKENIZER, prompts, completions, self.policy.cfg.max_len).to(self.device)
        self.policy.train()
        with autocast(self.device, self.learner.mixed_precision):
            loss = completion_nll(self.policy, batch)
        m = self.learner.apply(loss)
        B, T = batch.inputs.shape
        return {"loss": loss.detach(), "lr": m["lr"], "grad_norm": m["grad_norm"],
                "train_flops": self.policy.flops_per_token(T, backward=True) * B * T, "tokens": B * T}

    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict(), "reward": self.reward.state_dict(),
                "reward_net": self.reward_net.state_dict(), "generator": self.generator.get_state(),
                "np_rng": self.np_rng.bit_generator.state, "labelled": [list(x) for x in self.labelled]}

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state["learner"])
        self.reward.load_state_dict(state["reward"])
        self.reward_net.load_state_dict(state["reward_net"])
        self.generator.set_state(state["generator"])
        self.np_rng.bit_generator.state = state["np_rng"]
        self.labelled = [(p, c, float(y)) for p, c, y in state.get("labelled", [])]


class ExpertIteration(SelfImprover):
    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.kept: list[tuple[str, str]] = []  # (prompt, completion) judged correct, most recent last

    def collect(self, prompts: Sequence[str], verifier: Verifier) -> Experience:
        c = self.cfg
        ro = sample_rollouts(self.policy, prompts, c.samples, temperature=c.temperature,
                             generator=self.generator, device=self.device)
        exp = self._judge(prompts, ro, verifier, vote=c.label_source == "majority_vote", source=c.label_source)
        good = exp.accepted
        # under a vote the labels are agreement with the majority, not correctness
        label_tag = "train/vote_agreement" if c.label_source == "majority_vote" else "train/sample_accuracy"
        exp.metrics = {label_tag: float(np.mean(exp.labels)),
                       "train/kept_fraction": len(set(exp.rows[good].tolist())) / len(prompts)}
        return exp

    def learn(self, exp: Experience) -> dict:
        c = self.cfg
        rm = self.train_reward(exp)
        flops = {"reward": rm.pop("reward_flops"), "train": 0.0}
        # every finished trace judged correct (score >= 0.5) joins a replay of recent good
        # traces; updates draw from it, so each step sees a full batch (ReST's growing set)
        prompts, seen = exp.prompt_of, set()
        for i in np.flatnonzero(exp.accepted):
            if (prompts[i], exp.completions[i]) not in seen:
                seen.add((prompts[i], exp.completions[i]))
                self.kept.append((prompts[i], exp.completions[i]))
        self.kept = self.kept[-c.replay_size:]
        metrics: dict = {}
        if self.kept:
            for _ in range(c.updates_per_iter):
                pick = self.np_rng.integers(len(self.kept), size=min(c.train_batch, len(self.kept)))
                m = self.ml_update([self.kept[i][0] for i in pick], [self.kept[i][1] for i in pick])
                flops["train"] += m.pop("train_flops")
            metrics.update(m)
        metrics.update(rm)
        return {"metrics": metrics, "flops": flops}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "kept": [list(k) for k in self.kept]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.kept = [tuple(k) for k in state.get("kept", [])]


class PolicyGradient(SelfImprover):
    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.reference = copy.deepcopy(self.policy).eval() if self.cfg.kl_coef > 0 else None
        if self.reference is not None:
            self.reference.requires_grad_(False)

    def collect(self, prompts: Sequence[str], verifier: Verifier) -> Experience:
        c = self.cfg
        ro = sample_rollouts(self.policy, prompts, c.samples, temperature=c.temperature,
                             generator=self.generator, device=self.device)
        exp = self._judge(prompts, ro, verifier, vote=False, source=c.reward_source)
        if c.baseline == "value":  # the reward net's value of the prompt state as a learned baseline
            exp.baseline, f = self.reward.score(list(prompts), [""] * len(prompts), at_prompt=True)
            exp.flops["reward"] += f
        exp.metrics = {"train/sample_accuracy": float(np.mean(exp.labels))}
        return exp

    def learn(self, exp: Experience) -> dict:
        """``updates_per_iter`` clipped policy-gradient steps on this batch (GRPO). The first
        step's log-probs are the reference of the probability ratio, so with one update the
        ratio is exactly 1 and the step is plain REINFORCE with a baseline."""
        c = self.cfg
        rm = self.train_reward(exp)
        flops = {"reward": rm.pop("reward_flops"), "train": 0.0}
        reward = np.where(exp.finished, exp.scores, 0.0)  # a trace that never ended earns nothing
        if c.baseline == "group":  # GRPO/RLOO: each trace against its problem's group
            groups = reward.reshape(len(exp.prompts), c.samples)
            mean = groups.mean(1, keepdims=True)
            std = groups.std(1, keepdims=True)
            adv = ((groups - mean) / (std + 1e-4)).reshape(-1)
        else:
            adv = reward - exp.baseline[exp.rows]
        batch = encode_batch(TOKENIZER, exp.prompt_of, exp.completions, self.policy.cfg.max_len)
        # a trace cut off by the context had no EOS: do not train the EOS it never wrote
        cut = torch.as_tensor(~exp.finished)
        last = batch.loss_mask.cumsum(1).argmax(1)
        batch.loss_mask[torch.arange(len(last))[cut], last[cut]] = 0
        batch = batch.to(self.device)
        A = torch.as_tensor(adv, dtype=torch.float32, device=self.device)[:, None]  # [R, 1]
        denom = batch.loss_mask.sum().clamp(min=1)
        R, T = batch.inputs.shape
        ref = None
        if self.reference is not None:  # the KL anchor does not move: one forward for all updates
            with torch.no_grad(), autocast(self.device, self.learner.mixed_precision):
                ref = torch.log_softmax(self.reference(batch.inputs).float(), -1)
                ref = ref.gather(2, batch.targets[..., None]).squeeze(-1)  # [R, T]
            flops["train"] += self.policy.flops_per_token(T, backward=False) * R * T
        old = None  # [R, T] log-probs under the weights that took the first step
        self.policy.train()
        for _ in range(c.updates_per_iter):
            with autocast(self.device, self.learner.mixed_precision):
                logits = self.policy(batch.inputs).float()
                logp = torch.log_softmax(logits, -1).gather(2, batch.targets[..., None]).squeeze(-1)  # [R, T]
                if old is None:
                    old = logp.detach()
                ratio = (logp - old).exp()
                clipped = ratio.clamp(1 - c.clip_ratio, 1 + c.clip_ratio)
                loss = -(torch.minimum(ratio * A, clipped * A) * batch.loss_mask).sum() / denom
                kl = torch.zeros((), device=self.device)
                if ref is not None:
                    delta = ref - logp
                    kl = ((delta.exp() - delta - 1) * batch.loss_mask).sum() / denom  # k3 estimator, >= 0
                    loss = loss + c.kl_coef * kl
            m = self.learner.apply(loss)
            flops["train"] += self.policy.flops_per_token(T, backward=True) * R * T  # fwd + bwd
        metrics = {"loss": loss.detach(), "lr": m["lr"], "grad_norm": m["grad_norm"],
                   "tokens": R * T * c.updates_per_iter,
                   "train/reward_mean": float(np.mean(reward)), "train/kl": float(kl)}
        metrics.update(rm)
        return {"metrics": metrics, "flops": flops}


class AlphaZero(SelfImprover):
    """Search-driven self-play. The search's leaf values come from the reward net; its
    terminal values from the verifier (training problems only) or the network."""

    def __init__(self, *args, search_cfg: SearchConfig, **kw) -> None:
        super().__init__(*args, **kw)
        self.search_cfg = search_cfg
        self.replay: list[dict] = []  # recent searched traces: prompt, completion, visits, outcome

    def collect(self, prompts: Sequence[str], verifier: Verifier) -> Experience:
        s = self.search_cfg
        ids = TOKENIZER.encode_prompts(prompts)
        ev = PolicyValueEvaluator(self.policy, self.reward_net, top_k=s.top_k, terminal=s.terminal_value,
                                  verifier=state_verifier([len(i) for i in ids], verifier))
        self.policy.eval()
        self.reward_net.eval()
        with autocast(self.device):
            out = search(ids, ev, s, max_len=self.policy.cfg.max_len, vocab_size=self.policy.vocab_size,
                         eos_id=TOKENIZER.eos_id, generator=self.generator, device=self.device)
        completions = output_completions(out)
        last = out.tokens.gather(1, (out.length - 1).clamp(min=0)[:, None]).squeeze(1)
        finished = (last == TOKENIZER.eos_id).cpu().numpy()
        rows = np.arange(len(prompts))
        outcome = verifier(rows, completions).astype(float) * finished
        # targets only where the search ran: a confident move's distribution is the policy's
        # own prior (or what an earlier search of that subtree left), and cross-entropy to it
        # would teach nothing but a pull back to the policy that wrote it
        targets = out.policy * out.searched[..., None]  # visits, or the completed-Q policy
        visits = [targets[b, : int(out.moves[b])].cpu() for b in range(len(prompts))]
        exp = self._experience(prompts, rows, completions, finished, outcome, outcome,
                               {"search": ev.flops, "reward": 0.0}, visits=visits)
        moves = out.moves.sum().clamp(min=1)
        exp.metrics = {"train/sample_accuracy": float(outcome.mean()),
                       "search/searched_fraction": float(out.searched.sum() / moves)}
        return exp

    def learn(self, exp: Experience) -> dict:
        c = self.cfg
        for i in range(exp.size):
            self.replay.append({"prompt": exp.prompts[exp.rows[i]], "completion": exp.completions[i],
                                "finished": bool(exp.finished[i]), "visits": exp.visits[i],
                                "outcome": float(exp.labels[i])})
        self.replay = self.replay[-c.replay_size:]
        rm = self.train_reward(exp)
        flops = {"reward": rm.pop("reward_flops"), "train": 0.0}
        metrics: dict = {}
        for _ in range(c.updates_per_iter):
            m = self.policy_update()
            flops["train"] += m.pop("train_flops")
            metrics.update(m)
        metrics.update(rm)
        return {"metrics": metrics, "flops": flops}

    def policy_update(self) -> dict:
        """Cross-entropy of the policy's next-token distributions to the search's visits."""
        idx = self.np_rng.integers(len(self.replay), size=min(self.cfg.train_batch, len(self.replay)))
        items = [self.replay[i] for i in idx]
        batch = encode_batch(TOKENIZER, [it["prompt"] for it in items], [it["completion"] for it in items],
                             self.policy.cfg.max_len)
        B, T = batch.inputs.shape
        target = torch.zeros(B, T, self.policy.vocab_size)
        for row, it in enumerate(items):  # visits of move m sit at the position predicting token m
            start = len(it["prompt"])  # BOS + prompt: the last prompt token is at index len(prompt)
            v = it["visits"][: T - start]
            target[row, start: start + len(v)] = v
        weight = (target.sum(-1) > 0).float()  # moves the search ran at
        if not bool(weight.any()):  # nothing searched in this draw: no target, no step (not even decay)
            return {"tokens": 0, "train_flops": 0.0}
        target, weight = target.to(self.device), weight.to(self.device)
        inputs = batch.inputs.to(self.device)
        self.policy.train()
        with autocast(self.device, self.learner.mixed_precision):
            logp = torch.log_softmax(self.policy(inputs).float(), -1)
            loss = -(target * logp).sum(-1).mul(weight).sum() / weight.sum().clamp(min=1)
        m = self.learner.apply(loss)
        return {"loss": loss.detach(), "lr": m["lr"], "grad_norm": m["grad_norm"], "tokens": B * T,
                "train_flops": self.policy.flops_per_token(T, backward=True) * B * T}

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["replay"] = list(self.replay)  # plain dicts of str / float / tensor: weights_only-safe
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.replay = list(state.get("replay", []))


METHOD_CLASSES = {"expert_iteration": ExpertIteration, "policy_gradient": PolicyGradient, "alphazero": AlphaZero}
