"""``SearchConfig`` (the ``search.*`` keys) and the names its choices take."""

from __future__ import annotations

from dataclasses import dataclass

TERMINAL_VALUES = ("verifier", "learned")
POLICY_TARGETS = ("visits", "completed_q")
ROOTS = ("puct", "gumbel")
LEAF_VALUES = ("net", "rollout", "mix")


@dataclass(kw_only=True)
class SearchConfig:
    num_simulations: int = 32  # simulations per move (per token)
    leaves_per_call: int = 4  # leaves per tree evaluated together (virtual loss)
    top_k: int = 8  # children per node: the policy's top-k tokens
    c_puct: float = 1.5
    dirichlet_alpha: float = 0.3
    dirichlet_fraction: float = 0.0  # weight of root noise; 0 for evaluation, ~0.25 for self-play
    temperature: float = 0.0  # move choice from visits: 0 = most visited
    virtual_loss: float = 1.0
    terminal_value: str = "verifier"  # verifier | learned
    # a move whose top prior exceeds this is played from the prior, without simulations:
    # most tokens of a trace (digits of a result, separators) are near-certain, and search
    # spends its budget on the few real decisions. 1.0: search every move.
    confident_prior: float = 1.0
    # the improved policy each move reports (``SearchOutput.policy``): the visit distribution
    # (AlphaZero), or softmax(log prior + sigma(completed Q)) (Gumbel MuZero, Danihelka et al.
    # 2022). With a few dozen simulations visits mostly follow exploration and root noise, and
    # are flatter than the prior where the values do not differ; the completed-Q policy equals
    # the prior there and moves only where the values say so. sigma(q) = (maxvisit_init +
    # max_a N(a)) * value_scale * q, as mctx.
    policy_target: str = "visits"
    value_scale: float = 0.1
    maxvisit_init: float = 50.0
    # how the root spends a move's simulations and picks the move: PUCT from the root (with
    # Dirichlet noise for exploration, the move by ``temperature`` over visits), or Gumbel
    # MuZero's root (``agents/gumbel.py``): Gumbel-top-k over ``max_considered`` actions,
    # sequential halving, the survivor played; its improved policy is the completed-Q one
    # with min-max rescaled values, and ``gumbel_scale`` (0: none) is its only exploration.
    # Below the root both select by PUCT.
    root: str = "puct"
    max_considered: int = 16
    gumbel_scale: float = 1.0
    # the Gumbel root's completed Q min-max rescaled over the root's children before sigma
    # (mctx's default, for values of any scale). Ours are already P(correct) in [0, 1], and
    # rescaling stretches a 0.01 difference between two children's noisy values into the
    # full range, a target ~e^5 times sharper: from the countdown d64 warm start (seed 0,
    # 16 simulations, net leaves) the policy fell 0.21 -> 0.075 in 40 iterations with it,
    # and rose to 0.255 in 156 without it
    rescale_values: bool = False
    # a new non-terminal leaf's value: the reward net's P(correct) (net), the verifier's
    # verdict on the policy's greedy completion of it (rollout: on the verifier's scale, and
    # a verdict below the move, at the cost of a completion per leaf), or
    # (1 - rollout_weight) * net + rollout_weight * rollout (mix)
    leaf_value: str = "net"
    rollout_weight: float = 0.5
    # alphazero: measure the improvement win rate on each batch (agents/improvement.py): a
    # greedy completion of both choices at each informative move where they differ (its
    # compute is a measurement's, outside the ledger, like evaluation's)
    diagnostics: bool = True
    # > 0: the same pairs also continued by this many completions each, sampled at temperature
    # 1 from a stream of their own (search/improvement_sampled_*): apart from the greedy
    # completions that rollout-valued leaves shaped the target with
    diagnostic_samples: int = 0
    # alphazero: up to this many states the verifier judged in the tree per iteration
    # (terminal states and rollouts, off the path played too), each completed trace with its
    # verdict, join the reward net's training data: the siblings the search compares
    tree_traces: int = 256
    # leaves evaluated from each node's kept keys and values (one token per leaf through
    # each network; memory grows with the tree, see agents/tree_kv.py); false recomputes
    # every leaf's whole prefix: the reference, equal up to float rounding (tests/test_search.py)
    kv_cache: bool = True
    # every simulation call as fixed-shape tensor ops with no host sync (the design for a
    # GPU, where each sync stalls the launch queue): the walk runs a host-known bound of
    # levels with masks instead of stopping when every walk has, node creation writes every
    # tree (a scratch node takes the writes of trees that add none), and one network call
    # evaluates all B x leaves_per_call selected leaves (duplicates and ones already
    # evaluated included, their results discarded), each over its whole path's kept keys.
    # The only host work left inside a move is the verifier on new terminal leaves (none
    # with terminal_value=learned). The same trees as the default, up to float rounding
    # (tests/test_search.py); on CPU it is slower (no early exits, more leaf work).
    static: bool = False
    # static simulation calls replayed from CUDA graphs (agents/graph_replay.py), one per
    # bucket of walk levels: one launch instead of thousands of kernels. Needs static; off
    # CUDA the same code runs eagerly
    cuda_graph: bool = False
    # each walk level of the static path as one torch.compile'd function (Triton kernels on a
    # GPU, C++ on a CPU, where the default path does not use it). Needs static
    compile: bool = False

    def validate(self) -> None:
        if self.terminal_value not in TERMINAL_VALUES:
            raise ValueError(f"search.terminal_value={self.terminal_value!r}; choose one of {list(TERMINAL_VALUES)}")
        if self.policy_target not in POLICY_TARGETS:
            raise ValueError(f"search.policy_target={self.policy_target!r}; choose one of {list(POLICY_TARGETS)}")
        if self.num_simulations < 0 or self.leaves_per_call < 1 or self.top_k < 1:
            raise ValueError("search.num_simulations must be >= 0, leaves_per_call and top_k >= 1")
        if not 0.0 <= self.dirichlet_fraction <= 1.0:
            raise ValueError("search.dirichlet_fraction must lie in [0, 1]")
        if self.value_scale < 0 or self.maxvisit_init < 0:
            raise ValueError("search.value_scale and search.maxvisit_init must be >= 0")
        if not 0.0 <= self.confident_prior <= 1.0:
            raise ValueError("search.confident_prior must lie in [0, 1]")
        if self.leaf_value not in LEAF_VALUES:
            raise ValueError(f"search.leaf_value={self.leaf_value!r}; choose one of {list(LEAF_VALUES)}")
        if not 0.0 <= self.rollout_weight <= 1.0:
            raise ValueError("search.rollout_weight must lie in [0, 1]")
        if self.leaf_value != "net" and self.static:
            raise ValueError(
                "search.leaf_value=rollout/mix runs a completion per leaf on the host: search.static=false"
            )
        if self.root not in ROOTS:
            raise ValueError(f"search.root={self.root!r}; choose one of {list(ROOTS)}")
        if self.tree_traces < 0 or self.diagnostic_samples < 0:
            raise ValueError("search.tree_traces and search.diagnostic_samples must be >= 0")
        if self.max_considered < 1 or self.gumbel_scale < 0:
            raise ValueError("search.max_considered must be >= 1 and search.gumbel_scale >= 0")
        if self.root == "gumbel" and (self.static or self.dirichlet_fraction > 0):
            raise ValueError(
                "search.root=gumbel runs on the default path with no Dirichlet noise: set "
                "search.static=false and search.dirichlet_fraction=0 (the Gumbel draw explores)"
            )
        if (self.cuda_graph or self.compile) and not self.static:
            raise ValueError("search.cuda_graph=true and search.compile=true need search.static=true (fixed shapes)")
