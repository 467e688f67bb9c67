"""Batched MCTS: known answers on hand-built trees, and the zero-simulation limit."""

import numpy as np
import pytest
import torch

from emergent.agents.model import PLACE_SCHEMES, ModelConfig, TransformerLM
from emergent.agents.policy_value import PolicyValueEvaluator
from emergent.agents.reward_net import RewardNet
from emergent.agents.search import Expansion, SearchConfig, search
from emergent.agents.search.policies import _gamma
from emergent.envs import TOKENIZER

V, EOS = TOKENIZER.vocab_size, TOKENIZER.eos_id


class TableEvaluator:
    """A hand-built tree: priors per state from a table, terminal values from a table.

    States are keyed by their tokens after the prompt [1].
    """

    def __init__(self, priors: dict, values: dict, k: int):
        self.priors, self.values, self.k = priors, values, k
        self.expanded: list[tuple] = []
        self.calls = 0

    def _key(self, tokens, n):
        return tuple(tokens[1:n].tolist())

    def begin(self, tree):
        pass

    def expand(self, states):
        tokens, lengths = states.tokens, states.lengths
        self.calls += 1
        prior, toks = [], []
        for t, n in zip(tokens, lengths):
            key = self._key(t, int(n))
            self.expanded.append(key)
            table = self.priors.get(key, {3: 1.0})
            toks.append(list(table)[: self.k] + [0] * (self.k - len(table)))
            prior.append(list(table.values())[: self.k] + [0.0] * (self.k - len(table)))
        return Expansion(torch.tensor(prior), torch.tensor(toks), torch.full((len(tokens),), 0.5))

    def terminal_value(self, states):
        return torch.tensor([self.values[self._key(t, int(n))] for t, n in zip(states.tokens, states.lengths)])


def run(evaluator, *, max_len, sims, leaves=1, k=3, batch=1, **kw):
    cfg = SearchConfig(num_simulations=sims, leaves_per_call=leaves, top_k=k, **kw)
    return search([np.array([1])] * batch, evaluator, cfg, max_len=max_len, vocab_size=V, eos_id=EOS)


def test_bandit_visits_concentrate_on_the_best_arm():
    ev = TableEvaluator({(): {3: 1 / 3, 4: 1 / 3, 5: 1 / 3}}, {(3,): 0.2, (4,): 0.9, (5,): 0.5}, k=3)
    out = run(ev, max_len=2, sims=64, batch=2)
    probs = out.visit_probs[:, 0]
    assert probs.argmax(1).tolist() == [4, 4] and probs[:, 4].min() > 0.7
    assert out.tokens[:, 1].tolist() == [4, 4] and out.moves.tolist() == [1, 1]
    more = run(TableEvaluator(ev.priors, ev.values, k=3), max_len=2, sims=256).visit_probs[0, 0]
    assert more[4] > probs[0, 4]  # and concentrate further with more simulations


def test_search_overrules_a_misleading_prior_two_levels_down():
    # the prior prefers token 3, but every continuation after 3 fails and after 4 succeeds
    priors = {(): {3: 0.9, 4: 0.1}, (3,): {5: 0.5, 6: 0.5}, (4,): {5: 0.5, 6: 0.5}}
    values = {(3, 5): 0.0, (3, 6): 0.1, (4, 5): 1.0, (4, 6): 0.8}
    greedy = run(TableEvaluator(priors, values, k=2), max_len=3, sims=0, k=2)
    assert greedy.tokens[0, 1:3].tolist() == [3, 5]
    out = run(TableEvaluator(priors, values, k=2), max_len=3, sims=48, k=2)
    assert out.tokens[0, 1:3].tolist() == [4, 5]
    assert out.visit_probs[0, 0, 4] > 0.5
    assert out.visit_probs[0, 1, 5] > 0.5  # after 4, the search prefers 5 (1.0) to 6 (0.8)
    assert out.searched[0].tolist() == [True, True]  # confident_prior 1.0: every move is searched
    half = run(TableEvaluator(priors, values, k=2), max_len=3, sims=48, k=2, confident_prior=0.85)
    assert half.searched[0].tolist() == [False, True]  # the 0.9 prior is played; the 0.5/0.5 move searched


@pytest.mark.parametrize("sims,confident", [(0, 1.0), (16, 0.0)])
def test_zero_simulations_reduce_to_the_prior_and_to_greedy_decoding(sims, confident):
    # confident_prior=0 plays every move from its prior: no simulation runs at all
    torch.manual_seed(0)
    policy = TransformerLM(ModelConfig(n_layer=1, n_head=2, d_model=32, max_len=20), V).eval()
    value = RewardNet(ModelConfig(n_layer=1, n_head=2, d_model=32, max_len=20), V).eval()
    rng = np.random.default_rng(0)
    prompts = [np.concatenate([[1], rng.integers(3, V, size=n)]) for n in (3, 6, 4)]
    ev = PolicyValueEvaluator(policy, value, top_k=V, terminal="learned")
    out = search(
        prompts,
        ev,
        SearchConfig(num_simulations=sims, top_k=V, terminal_value="learned", confident_prior=confident),
        max_len=20,
        vocab_size=V,
        eos_id=EOS,
    )
    # one network call for the roots, then one per move except the last (its state is terminal)
    assert ev.calls == int(out.moves.max())
    assert not out.searched.any()
    greedy = policy.generate(prompts, 20, eos_id=EOS, pad_id=0)
    for b, p in enumerate(prompts):
        n = int(greedy.lengths[b]) + int(greedy.finished[b])
        assert out.tokens[b, len(p) : len(p) + n].tolist() == greedy.tokens[b, :n].tolist()
        # each move's visit distribution is the policy's next-token distribution
        with torch.no_grad():
            seq = out.tokens[b : b + 1, : len(p)]
            expected = torch.softmax(policy(seq)[0, -1], -1)
        torch.testing.assert_close(out.visit_probs[b, 0], expected, atol=1e-5, rtol=1e-4)


def test_virtual_loss_spreads_one_call_over_distinct_leaves():
    ev = TableEvaluator({(): {3: 0.4, 4: 0.3, 5: 0.3}}, {(3,): 0.5, (4,): 0.5, (5,): 0.5}, k=3)
    out = run(ev, max_len=2, sims=3, leaves=3)
    # one network call for the root; the three leaves of the single simulation batch are
    # the three distinct (terminal) arms, not one arm three times
    assert ev.calls == 1
    assert out.visit_probs[0, 0, [3, 4, 5]] == pytest.approx(torch.full((3,), 1 / 3))


def test_noise_and_sampling_follow_the_explicit_generator():
    priors = {(): {3: 0.5, 4: 0.5}, (3,): {5: 0.5, 6: 0.5}, (4,): {5: 0.5, 6: 0.5}}
    values = {(3, 5): 0.5, (3, 6): 0.5, (4, 5): 0.5, (4, 6): 0.5}

    def go(seed):
        cfg = SearchConfig(num_simulations=8, top_k=2, dirichlet_fraction=0.5, temperature=1.0)
        return search(
            [np.array([1])] * 16,
            TableEvaluator(priors, values, k=2),
            cfg,
            max_len=3,
            vocab_size=V,
            eos_id=EOS,
            generator=torch.Generator().manual_seed(seed),
        ).tokens

    assert torch.equal(go(1), go(1)) and not torch.equal(go(1), go(2))


def test_sampled_moves_survive_trees_that_finish_early():
    # tree 0 (prompt [1, 7]) can only write EOS; tree 1 (prompt [1]) writes 3 then EOS.
    # While tree 1 moves on, tree 0's finished root has no visits to sample a move from.
    priors = {(7,): {EOS: 1.0}, (): {3: 1.0}, (3,): {EOS: 1.0}}
    values = {(7, EOS): 1.0, (3, EOS): 1.0}
    cfg = SearchConfig(num_simulations=4, top_k=1, temperature=1.0)
    out = search(
        [np.array([1, 7]), np.array([1])],
        TableEvaluator(priors, values, k=1),
        cfg,
        max_len=4,
        vocab_size=V,
        eos_id=EOS,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.moves.tolist() == [1, 2]


def test_gamma_sampler_has_the_right_mean():
    g = _gamma(torch.full((20000,), 0.3), torch.Generator().manual_seed(0))
    assert float(g.mean()) == pytest.approx(0.3, rel=0.05)
    assert (g > 0).all()


def test_bad_search_config():
    with pytest.raises(ValueError, match="terminal_value"):
        SearchConfig(terminal_value="oracle").validate()


def test_completed_q_policy_moves_only_where_the_values_differ():
    # three equally good arms: visits spread by exploration, the completed-Q policy keeps the prior
    flat = TableEvaluator({(): {3: 0.6, 4: 0.3, 5: 0.1}}, {(3,): 0.5, (4,): 0.5, (5,): 0.5}, k=3)
    out = run(flat, max_len=2, sims=64, policy_target="completed_q")
    torch.testing.assert_close(out.policy[0, 0, [3, 4, 5]], torch.tensor([0.6, 0.3, 0.1]))
    # one arm wins: the policy moves to it, and more sharply than the prior allows visits to
    ev = TableEvaluator({(): {3: 0.6, 4: 0.3, 5: 0.1}}, {(3,): 0.0, (4,): 1.0, (5,): 0.0}, k=3)
    out = run(ev, max_len=2, sims=64, policy_target="completed_q")
    assert out.policy[0, 0].argmax() == 4 and out.policy[0, 0, 4] > out.visit_probs[0, 0, 4] > 0.5
    assert out.policy[0, 0].sum() == pytest.approx(1.0)
    # with no simulation it is the prior
    none = run(ev, max_len=2, sims=0, policy_target="completed_q")
    torch.testing.assert_close(none.policy[0, 0, [3, 4, 5]], torch.tensor([0.6, 0.3, 0.1]))


def test_completed_q_policy_is_computed_from_the_prior_before_root_noise():
    ev = TableEvaluator({(): {3: 0.6, 4: 0.3, 5: 0.1}}, {(3,): 0.5, (4,): 0.5, (5,): 0.5}, k=3)
    cfg = SearchConfig(
        num_simulations=16, leaves_per_call=1, top_k=3, dirichlet_fraction=0.5, policy_target="completed_q"
    )
    out = search(
        [np.array([1])], ev, cfg, max_len=2, vocab_size=V, eos_id=EOS, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out.policy[0, 0, [3, 4, 5]], torch.tensor([0.6, 0.3, 0.1]))
    # the visits followed the noisy prior: as a target they would teach the noise
    assert (out.visit_probs[0, 0, [3, 4, 5]] - torch.tensor([0.6, 0.3, 0.1])).abs().max() > 0.1


# -- leaf evaluation from per-node keys and values ------------------------------------------------


def tiny_networks(pos: str, dtype=torch.float32, device="cpu"):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=32, max_len=24, pos=pos)
    policy, value = TransformerLM(cfg, V), RewardNet(cfg, V)
    torch.nn.init.normal_(value.head.weight, 0.0, 0.5)  # an opinionated judge: values differ by state
    return policy.to(device, dtype).eval(), value.to(device, dtype).eval()


def searched(
    policy, value, kv_cache: bool, *, device="cpu", sims=12, static=False, graph=False, confident=1.0, compiled=False
):
    """Five moves of search over four prompts, each walk bounded as ``search`` bounds it."""
    from emergent.agents.graph_replay import GraphReplay
    from emergent.agents.search import init_tree, search_move, visits_policy
    from emergent.agents.search.loop import path

    rng = np.random.default_rng(1)
    end = TOKENIZER.encode("=") if policy.cfg.pos in PLACE_SCHEMES else []  # an arithmetic prompt's end
    prompts = [np.concatenate([[1], rng.integers(3, V, size=n), end]) for n in (3, 7, 5, 4)]
    ev = PolicyValueEvaluator(policy, value, top_k=4, terminal="learned", kv_cache=kv_cache)
    cfg = SearchConfig(
        num_simulations=sims,
        leaves_per_call=3,
        top_k=4,
        terminal_value="learned",
        dirichlet_fraction=0.25,
        static=static,
        cuda_graph=graph,
        confident_prior=confident,
        compile=compiled,
    )
    tree = init_tree(prompts, capacity=400, top_k=4, max_len=24, device=device)
    ev.begin(tree)
    path(cfg).evaluate_leaves(tree, tree.root[:, None], torch.ones(4, 1, dtype=torch.bool, device=device), ev)
    gen = torch.Generator().manual_seed(0)
    graphs, depth = GraphReplay(cuda=tree.tokens.is_cuda) if graph else None, 0
    for _ in range(5):
        active = ~tree.terminal[torch.arange(4, device=device), tree.root]
        depth = search_move(
            tree, active, ev, cfg, improved=visits_policy, generator=gen, eos_id=EOS, depth=depth, graphs=graphs
        ).depth
    return tree, ev


@pytest.mark.parametrize("pos", ["learned", "rope", *PLACE_SCHEMES])
def test_cached_leaf_evaluation_equals_recomputing_every_prefix(pos):
    """A searched tree's priors and values, each computed from its ancestors' kept keys and
    values, match the full forward of each state's whole prefix, and cost less."""
    policy, value = tiny_networks(pos)
    tree, cached = searched(policy, value, kv_cache=True)
    b, n = tree.expanded.nonzero(as_tuple=True)
    assert len(b) > 60 and int(tree.length[b, n].max() - tree.length[:, 0].min()) >= 4  # deep enough to matter
    from emergent.agents.search import States

    states = States(b, n, tree.tokens[b, n], tree.length[b, n], tree.node_at[b, n])
    full = PolicyValueEvaluator(policy, value, top_k=4, terminal="learned", kv_cache=False)
    # the roots so far (node 0 and the nodes each move went to) carry Dirichlet noise in their priors
    was_root = (n == 0) | (tree.node_at[b, tree.root[b]] == n[:, None]).any(1)
    live = ~tree.terminal[b, n] & ~was_root
    ref = full.expand(states.subset(live))
    torch.testing.assert_close(tree.prior[b[live], n[live]], ref.prior, atol=1e-5, rtol=1e-5)
    assert torch.equal(tree.child_token[b[live], n[live]], ref.child_token)
    torch.testing.assert_close(tree.value[b, n], full.terminal_value(states), atol=1e-5, rtol=1e-5)
    _, uncached = searched(policy, value, kv_cache=False)
    assert cached.calls == uncached.calls and cached.flops < uncached.flops / 2


def test_cached_and_recomputed_search_make_the_same_tree_in_fp64(monkeypatch):
    # the key tables start uninitialised: filled with NaN here, any slot read before it was
    # written would poison priors and values, and the trees would differ
    from emergent.agents.tree_kv import TreeKV

    monkeypatch.setattr(TreeKV, "poison", float("nan"))
    policy, value = tiny_networks("learned", torch.float64)
    a, _ = searched(policy, value, kv_cache=True)
    b, _ = searched(policy, value, kv_cache=False)
    for field in ("tokens", "node_at", "children", "visits", "num_nodes", "root"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    torch.testing.assert_close(a.value_sum, b.value_sum, atol=1e-12, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("static", [False, True, "graph"])
def test_search_on_cuda_makes_the_tree_it_makes_on_cpu_in_fp64(static):
    """The default, ``search.static``, and static calls replayed from CUDA graphs (trees whose
    active set changes between moves, so a graph reading a stale input would show)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    kw = dict(kv_cache=True, confident=0.35, sims=24)
    cpu, _ = searched(*tiny_networks("rope", torch.float64), **kw)
    gpu, _ = searched(
        *tiny_networks("rope", torch.float64, "cuda"), device="cuda", static=bool(static), graph=static == "graph", **kw
    )
    assert torch.equal(cpu.num_nodes, gpu.num_nodes.cpu()) and torch.equal(cpu.root, gpu.root.cpu())
    for field in ("tokens", "node_at", "children", "visits"):  # all but the scratch node
        assert torch.equal(getattr(cpu, field)[:, :-1], getattr(gpu, field)[:, :-1].cpu()), field
    torch.testing.assert_close(cpu.value_sum[:, :-1], gpu.value_sum[:, :-1].cpu(), atol=1e-12, rtol=0)


@pytest.mark.gpu
def test_static_simulation_on_cuda_never_synchronises(monkeypatch):
    """CUDA's own check: with sync debug mode set to error, every ``search.static``
    simulation call (learned terminal values) runs without one synchronising op."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from emergent.agents.search import static as S  # the fixed-shape simulation call

    real, calls = S.simulate, []

    def strict(*args, **kw):
        torch.cuda.set_sync_debug_mode("error")
        try:
            real(*args, **kw)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        calls.append(1)

    monkeypatch.setattr(S, "simulate", strict)
    searched(*tiny_networks("rope", torch.float64, "cuda"), kv_cache=True, device="cuda", static=True)
    assert len(calls) >= 10


def test_selection_walks_the_same_in_torch_and_in_numpy():
    """On CPU the walk runs on numpy views of the tree (CUDA runs it in torch, with early
    exits or, ``search.static``, a fixed number of masked levels): from the same mid-search
    tree, with some walks inactive and virtual loss pending, all three pick the same leaves
    and edges and write the same virtual visits; too few levels is an error."""
    from emergent.agents.search import static as static_path
    from emergent.agents.search.dynamic import _walk
    from emergent.agents.search.tree import _rows, walk_tables

    tree, _ = searched(*tiny_networks("learned"), kv_cache=True, sims=24)
    B, N, K = tree.children.shape
    tree.vloss.view(-1)[torch.randperm(B * N, generator=torch.Generator().manual_seed(0))[:200]] = 1.0
    base = _rows(B, tree.root.device) * N
    active = torch.tensor([True, False, True, True])

    depth = int(
        (tree.length - tree.length[torch.arange(B), tree.root][:, None])[
            tree.num_nodes[:, None] > torch.arange(N)
        ].max()
    )

    def walk(numpy: bool, early_exit: bool = True, levels: int = 24):
        vloss = tree.vloss.clone().view(-1)  # written by the walk
        tables = [*walk_tables(tree)[0][:6], vloss, base, base + tree.root, active]
        if numpy:
            out = _walk(*(t.numpy() for t in tables), c_puct=1.5, virtual_loss=np.float32(1.0), levels=levels)
        elif early_exit:
            out = _walk(*tables, c_puct=1.5, virtual_loss=1.0, levels=levels)
        else:  # the fixed-shape walk: every level runs
            out = static_path._walk(*tables, c_puct=1.5, virtual_loss=1.0, levels=levels)
        return [torch.as_tensor(x) for x in out], vloss

    (node, new, action), vloss = walk(numpy=False)
    for other in (
        walk(numpy=True),
        walk(numpy=False, early_exit=False),
        walk(numpy=False, early_exit=False, levels=depth + 1),
    ):  # the bound search_move passes
        (node2, new2, action2), vloss2 = other
        assert torch.equal(node, node2) and torch.equal(new, new2) and torch.equal(action, action2)
        assert torch.equal(vloss, vloss2)
    with pytest.raises(RuntimeError, match="deeper than its bound"):
        walk(numpy=True, levels=1)
    assert bool((node != tree.root)[active].any()) and torch.equal(node[~active], tree.root[~active])
    assert float((vloss - tree.vloss.view(-1)).sum()) >= 6  # each active walk marked its path


def test_node_creation_is_the_same_in_torch_and_in_numpy():
    """Node creation runs on numpy views on CPU and in torch on CUDA (with ``search.static``
    in fixed shapes): from the same tree, all three add the same children and return the
    same child indices; the fixed-shape one also writes the scratch node, and only it."""
    import dataclasses

    from emergent.agents.search import static as static_path
    from emergent.agents.search.tree import _add_children

    tree, _ = searched(*tiny_networks("learned"), kv_cache=True, sims=12)
    B, N, L = tree.tokens.shape
    K = tree.children.shape[2]
    nodes = tree.num_nodes - 1  # each tree's newest node: no children yet
    actions = torch.tensor([0, 1, 2, 3])
    create = (tree.children[torch.arange(B), nodes, actions] < 0) & torch.tensor([True, True, False, True])
    assert create.any()

    def make(numpy: bool, static: bool = False):
        t = {
            k: v.clone()
            for k, v in (
                ("tokens", tree.tokens),
                ("node_at", tree.node_at),
                ("length", tree.length),
                ("children", tree.children),
                ("child_token", tree.child_token),
                ("terminal", tree.terminal),
                ("num_nodes", tree.num_nodes),
            )
        }
        flat = [
            t["tokens"].view(B * N, L),
            t["node_at"].view(B * N, L),
            t["length"].view(-1),
            t["children"].view(B * N, K),
            t["child_token"].view(B * N, K),
            t["terminal"].view(-1),
            t["num_nodes"],
            nodes,
            actions,
            create,
        ]
        if static:  # the fixed-shape twin works on the tree itself
            return static_path.add_children(dataclasses.replace(tree, **t), nodes, actions, create, eos_id=EOS), t
        child = _add_children(*(x.numpy() for x in flat) if numpy else flat, eos_id=EOS)
        return torch.as_tensor(child), t

    (c1, t1), (c2, t2), (c3, t3) = make(False), make(True), make(False, static=True)
    assert torch.equal(c1, c2) and all(torch.equal(t1[k], t2[k]) for k in t1)
    assert torch.equal(t1["num_nodes"], tree.num_nodes + create.long())
    assert torch.equal(c1, c3) and torch.equal(t1["num_nodes"], t3["num_nodes"])
    for k in ("tokens", "node_at", "length", "children", "child_token", "terminal"):
        assert torch.equal(t1[k][:, :-1], t3[k][:, :-1]), k  # all but the scratch node
        assert torch.equal(t1[k][:, -1], tree.__dict__[k][:, -1]), k
    assert not torch.equal(t3["tokens"][:, -1], tree.tokens[:, -1])  # the trees adding nothing wrote there


# -- search.static: the fixed-shape simulation a GPU needs --------------------------------------


@pytest.mark.parametrize("pos", ["learned", "rope", *PLACE_SCHEMES])
def test_static_search_makes_the_same_tree_in_fp64(monkeypatch, pos):
    """``search.static`` (fixed shapes: masked walk levels, node creation in every tree, all
    selected leaves through the networks over their whole paths) makes the tree the default
    makes, with and without kept keys, from key tables poisoned with NaN."""
    from emergent.agents.tree_kv import TreeKV

    monkeypatch.setattr(TreeKV, "poison", float("nan"))
    policy, value = tiny_networks(pos, torch.float64)
    ref, _ = searched(policy, value, kv_cache=True)
    real = ref.expanded[:, :-1] & ~ref.terminal[:, :-1]
    for kv_cache in (True, False):
        tree, _ = searched(policy, value, kv_cache=kv_cache, static=True)
        assert torch.equal(ref.num_nodes, tree.num_nodes) and torch.equal(ref.root, tree.root)
        for field in ("tokens", "node_at", "children", "visits", "expanded", "terminal"):
            assert torch.equal(getattr(ref, field)[:, :-1], getattr(tree, field)[:, :-1]), field
        torch.testing.assert_close(ref.value_sum[:, :-1], tree.value_sum[:, :-1], atol=1e-12, rtol=0)
        torch.testing.assert_close(ref.value[:, :-1], tree.value[:, :-1], atol=1e-12, rtol=0)
        torch.testing.assert_close(ref.prior[:, :-1][real], tree.prior[:, :-1][real], atol=1e-12, rtol=0)


SYNCING = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique2",
    "aten::_unique",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::bincount",
    "aten::repeat_interleave",
}


class HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the ops that make the host wait for a CUDA device: reading a value (``item``,
    ``bool``, ``int``), and ops whose output shape depends on the data (``nonzero``, boolean
    indexing, ``unique``). On CPU they cost nothing, so this is how a CPU test sees them."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        masked = name.startswith("aten::index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ()
        )
        if name in SYNCING or masked:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("terminal", ["learned", "verifier"])
def test_static_simulation_calls_never_wait_on_the_device(monkeypatch, terminal):
    """Inside a move, a ``search.static`` simulation call (walks, node creation, leaf
    evaluation through both networks, backups) reads nothing back: with a learned terminal
    value nothing at all, with the verifier one ``nonzero`` (which leaves are terminal).
    The default path reads many times per call (which is how it is known the check can
    fail). Same search either way."""
    from emergent.agents.policy_value import state_verifier
    from emergent.agents.search import dynamic
    from emergent.agents.search import static as fixed

    policy, value = tiny_networks("rope", torch.float64)
    rng = np.random.default_rng(2)
    prompts = [np.concatenate([[1], rng.integers(3, V, size=n)]) for n in (3, 7, 5, 4, 6)]
    verifier = state_verifier([len(p) for p in prompts], lambda rows, comps: np.array([len(c) % 3 == 0 for c in comps]))
    reads = []

    def watched(real):
        def call(*args, **kw):
            with HostReads() as mode:
                real(*args, **kw)
            reads.append(mode.reads)

        return call

    for path in (dynamic, fixed):  # each simulation call, on either path
        monkeypatch.setattr(path, "simulate", watched(path.simulate))
    outs = {}
    for static in (True, False):
        reads.clear()
        ev = PolicyValueEvaluator(policy, value, top_k=4, terminal=terminal, verifier=verifier)
        cfg = SearchConfig(num_simulations=12, leaves_per_call=4, top_k=4, terminal_value=terminal, static=static)
        outs[static] = search(prompts, ev, cfg, max_len=24, vocab_size=V, eos_id=EOS)
        assert len(reads) >= 20
        if static:
            assert all(r == ([] if terminal == "learned" else ["aten::nonzero"]) for r in reads), reads
        else:
            assert min(len(r) for r in reads) >= 4
    for field in ("tokens", "length", "moves"):
        assert torch.equal(getattr(outs[True], field), getattr(outs[False], field)), field
    torch.testing.assert_close(outs[True].visit_probs, outs[False].visit_probs, atol=1e-12, rtol=0)


def test_graph_replayed_simulations_make_the_same_search():
    """``search.cuda_graph``: off CUDA its eager twin replays the function each bucket of walk
    levels kept (as a graph replays what it captured), reading ``active`` from its buffer;
    the tree, the search, its FLOP count and its call count equal the static search's."""
    policy, value = tiny_networks("rope", torch.float64)
    a, ev_a = searched(policy, value, kv_cache=True, static=True, confident=0.35, sims=24)
    b, ev_b = searched(policy, value, kv_cache=True, static=True, confident=0.35, sims=24, graph=True)
    for field in ("tokens", "node_at", "children", "visits", "num_nodes", "root", "value_sum"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert ev_a.calls == ev_b.calls and ev_a.flops == ev_b.flops
    rng = np.random.default_rng(3)
    prompts = [np.concatenate([[1], rng.integers(3, V, size=n)]) for n in (3, 7, 5, 4, 6)]
    outs, evs = {}, {}
    for graph in (False, True):
        evs[graph] = PolicyValueEvaluator(policy, value, top_k=4, terminal="learned")
        cfg = SearchConfig(
            num_simulations=12,
            leaves_per_call=4,
            top_k=4,
            terminal_value="learned",
            static=True,
            cuda_graph=graph,
            dirichlet_fraction=0.25,
            confident_prior=0.9,
        )
        outs[graph] = search(
            prompts, evs[graph], cfg, max_len=24, vocab_size=V, eos_id=EOS, generator=torch.Generator().manual_seed(0)
        )
    assert bool(outs[True].searched.any()) and not bool(outs[True].searched.all())  # active trees vary by move
    for field in outs[True]._fields:
        assert torch.equal(getattr(outs[True], field), getattr(outs[False], field)), field
    assert evs[True].calls == evs[False].calls and evs[True].flops == evs[False].flops
    with pytest.raises(ValueError, match="need search.static"):
        SearchConfig(cuda_graph=True).validate()


def test_compiled_walk_levels_make_the_same_tree():
    """``search.compile``: the static walk's levels through torch.compile (one fused function
    a level) make the static search's tree in fp64. A CPU compiles C++ here (a machine
    without a C++ compiler fails this test); a GPU, Triton."""
    policy, value = tiny_networks("rope", torch.float64)
    a, _ = searched(policy, value, kv_cache=True, static=True, sims=12)
    b, _ = searched(policy, value, kv_cache=True, static=True, sims=12, compiled=True)
    for field in ("tokens", "node_at", "children", "visits", "num_nodes", "root", "value_sum"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    with pytest.raises(ValueError, match="need search.static"):
        SearchConfig(compile=True).validate()
