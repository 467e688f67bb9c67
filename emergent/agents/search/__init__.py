"""Batched PUCT Monte-Carlo tree search over next tokens, for many problems at once.

mctx-style: a typed, frozen record (``Tree``) and small functions over it, in three
layers: ``simulate`` is one simulation step over a batch of trees; ``search_move`` runs a
move's simulations and reads the improved policy at the root; ``search`` is the decode
loop around it. The improved policy (visit counts, or Gumbel MuZero's completed Q) is
chosen once, as a function (``IMPROVED_POLICIES``). The record's fields are fixed; its
tensors are updated in place (copying them per simulation would cost more than the
search). Random draws take an explicit ``torch.Generator``. Tuning arguments are
keyword-only fields of ``SearchConfig``. The network evaluator and the text boundary live
in ``policy_value.py``.

Shapes: B problems (one tree each), N node capacity per tree, K children per node (the
policy's top-k tokens), L the context length, V the vocabulary, M states evaluated in
one call.

One move of search:
  1. ``simulate`` ``num_simulations`` times. Each call selects ``leaves_per_call`` leaves
     per tree by PUCT; a virtual loss on each selected path pushes later selections
     elsewhere, so one network call evaluates B x leaves_per_call states.
  2. New non-terminal leaves are expanded by the ``LeafEvaluator``: priors over the policy's
     top-k next tokens, and a value from the reward-and-objective network. Terminal
     leaves (EOS or a full context) are valued by ``terminal_value``: the verifier, or
     the learned network.
  3. The value is backed up along each path.
  4. The move's visit distribution is read at the root, a token chosen, and the root
     moves to that child. The child's subtree, with its statistics, is reused.

A simulation call runs one of two ways, to the same trees, behind the same functions. By
default (``dynamic``) it reads the host when that saves work (walks stop when all have,
only new leaves are evaluated, the walk and node creation run on numpy views on CPU):
cheapest on a CPU. ``search.static`` (``static``) runs it in fixed shapes with nothing read
back inside a move, so a GPU's launch queue never drains; ``search.cuda_graph`` then
replays each call from a CUDA graph. ``loop.path`` picks one, once.

The package's modules, in mctx's layout: ``config`` (``SearchConfig``), ``tree`` (the record
and its node operations), ``dynamic`` (one simulation call, the default path), ``static``
(its fixed-shape twin), ``policies`` (root noise, the improved policies, the move's choice) and ``loop`` (a
move's search and the decode loop).
"""

from .config import LEAF_VALUES, POLICY_TARGETS, ROOTS, TERMINAL_VALUES, SearchConfig
from .dynamic import evaluate_leaves, simulate
from .loop import advance, search, search_move
from .policies import IMPROVED_POLICIES, choose, completed_q_policy, visits_policy
from .tree import Expansion, LeafEvaluator, Move, SearchOutput, States, Tree, init_tree

__all__ = [
    "IMPROVED_POLICIES",
    "LEAF_VALUES",
    "POLICY_TARGETS",
    "ROOTS",
    "TERMINAL_VALUES",
    "Expansion",
    "LeafEvaluator",
    "Move",
    "SearchConfig",
    "SearchOutput",
    "States",
    "Tree",
    "advance",
    "choose",
    "completed_q_policy",
    "evaluate_leaves",
    "init_tree",
    "search",
    "search_move",
    "simulate",
    "visits_policy",
]
