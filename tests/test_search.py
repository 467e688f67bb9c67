"""Batched MCTS: known answers on hand-built trees, and the zero-simulation limit."""
import numpy as np
import pytest
import torch

from emergent.agents.model import ModelConfig, TransformerLM
from emergent.agents.reward_net import RewardNet
from emergent.agents.policy_value import PolicyValueEvaluator
from emergent.agents.search import Expansion, SearchConfig, _gamma, search
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
    out = search(prompts, ev, SearchConfig(num_simulations=sims, top_k=V, terminal_value="learned",
                                           confident_prior=confident), max_len=20, vocab_size=V, eos_id=EOS)
    # one network call for the roots, then one per move except the last (its state is terminal)
    assert ev.calls == int(out.moves.max())
    assert not out.searched.any()
    greedy = policy.generate(prompts, 20, eos_id=EOS, pad_id=0)
    for b, p in enumerate(prompts):
        n = int(greedy.lengths[b]) + int(greedy.finished[b])
        assert out.tokens[b, len(p): len(p) + n].tolist() == greedy.tokens[b, :n].tolist()
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
    assert (out.visit_probs[0, 0, [3, 4, 5]] == pytest.approx(torch.full((3,), 1 / 3)))


def test_noise_and_sampling_follow_the_explicit_generator():
    priors = {(): {3: 0.5, 4: 0.5}, (3,): {5: 0.5, 6: 0.5}, (4,): {5: 0.5, 6: 0.5}}
    values = {(3, 5): 0.5, (3, 6): 0.5, (4, 5): 0.5, (4, 6): 0.5}
    def go(seed):
        cfg = SearchConfig(num_simulations=8, top_k=2, dirichlet_fraction=0.5, temperature=1.0)
        return search([np.array([1])] * 16, TableEvaluator(priors, values, k=2), cfg, max_len=3, vocab_size=V,
                      eos_id=EOS, generator=torch.Generator().manual_seed(seed)).tokens

    assert torch.equal(go(1), go(1)) and not torch.equal(go(1), go(2))


def test_sampled_moves_survive_trees_that_finish_early():
    # tree 0 (prompt [1, 7]) can only write EOS; tree 1 (prompt [1]) writes 3 then EOS.
    # While tree 1 moves on, tree 0's finished root has no visits to sample a move from.
    priors = {(7,): {EOS: 1.0}, (): {3: 1.0}, (3,): {EOS: 1.0}}
    values = {(7, EOS): 1.0, (3, EOS): 1.0}
    cfg = SearchConfig(num_simulations=4, top_k=1, temperature=1.0)
    out = search([np.array([1, 7]), np.array([1])], TableEvaluator(priors, values, k=1), cfg, max_len=4,
                 vocab_size=V, eos_id=EOS, generator=torch.Generator().manual_seed(0))
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
    cfg = SearchConfig(num_simulations=16, leaves_per_call=1, top_k=3, dirichlet_fraction=0.5,
                       policy_target="completed_q")
    out = search([np.array([1])], ev, cfg, max_len=2, vocab_size=V, eos_id=EOS,
                 generator=torch.Generator().manual_seed(0))
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


def searched(policy, value, kv_cache: bool, *, device="cpu", sims=12):
    from emergent.agents.search import evaluate_leaves, init_tree, search_move, visits_policy

    rng = np.random.default_rng(1)
    prompts = [np.concatenate([[1], rng.integers(3, V, size=n)]) for n in (3, 7, 5, 4)]
    ev = PolicyValueEvaluator(policy, value, top_k=4, terminal="learned", kv_cache=kv_cache)
    cfg = SearchConfig(num_simulations=sims, leaves_per_call=3, top_k=4, terminal_value="learned",
                       dirichlet_fraction=0.25)
    tree = init_tree(prompts, capacity=400, top_k=4, max_len=24, device=device)
    ev.begin(tree)
    evaluate_leaves(tree, tree.root[:, None], torch.ones(4, 1, dtype=torch.bool, device=device), ev)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        active = ~tree.terminal[torch.arange(4, device=device), tree.root]
        search_move(tree, active, ev, cfg, improved=visits_policy, generator=gen, eos_id=EOS)
    return tree, ev


@pytest.mark.parametrize("pos", ["learned", "rope"])
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
    ref = full.expand(States(*(t[live] for t in states)))
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
def test_search_on_cuda_makes_the_tree_it_makes_on_cpu_in_fp64():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu, _ = searched(*tiny_networks("rope", torch.float64), kv_cache=True)
    gpu, _ = searched(*tiny_networks("rope", torch.float64, "cuda"), kv_cache=True, device="cuda")
    for field in ("tokens", "node_at", "children", "visits", "num_nodes", "root"):
        assert torch.equal(getattr(cpu, field), getattr(gpu, field).cpu()), field
    torch.testing.assert_close(cpu.value_sum, gpu.value_sum.cpu(), atol=1e-12, rtol=0)


def test_selection_walks_the_same_in_torch_and_in_numpy():
    """On CPU the walk runs on numpy views of the tree (CUDA runs it in torch): from the same
    mid-search tree, with some walks inactive and virtual loss pending, both pick the same
    leaves and edges and write the same virtual visits."""
    from emergent.agents.search import _rows, _walk

    tree, _ = searched(*tiny_networks("learned"), kv_cache=True, sims=24)
    B, N, K = tree.children.shape
    tree.vloss.view(-1)[torch.randperm(B * N, generator=torch.Generator().manual_seed(0))[:200]] = 1.0
    base = _rows(B, tree.root.device) * N
    active = torch.tensor([True, False, True, True])

    def walk(numpy: bool):
        vloss = tree.vloss.clone().view(-1)  # written by the walk
        tables = [(tree.visits + tree.vloss).view(-1), tree.value_sum.view(-1), tree.value.view(-1),
                  tree.children.view(B * N, K), tree.prior.view(B * N, K),
                  (~tree.expanded | tree.terminal).view(-1), vloss, base, base + tree.root, active]
        if numpy:
            out = _walk(*(t.numpy() for t in tables), c_puct=1.5, virtual_loss=np.float32(1.0))
        else:
            out = _walk(*tables, c_puct=1.5, virtual_loss=1.0)
        return [torch.as_tensor(x) for x in out], vloss

    (node, new, action), vloss = walk(numpy=False)
    (node2, new2, action2), vloss2 = walk(numpy=True)
    assert torch.equal(node, node2) and torch.equal(new, new2) and torch.equal(action, action2)
    assert torch.equal(vloss, vloss2)
    assert bool((node != tree.root)[active].any()) and torch.equal(node[~active], tree.root[~active])
    assert float((vloss - tree.vloss.view(-1)).sum()) >= 6  # each active walk marked its path


def test_node_creation_is_the_same_in_torch_and_in_numpy():
    """Node creation runs on numpy views on CPU and in torch on CUDA: from the same tree, both
    add the same children and return the same child indices."""
    from emergent.agents.search import _add_children

    tree, _ = searched(*tiny_networks("learned"), kv_cache=True, sims=12)
    B, N, L = tree.tokens.shape
    K = tree.children.shape[2]
    nodes = tree.num_nodes - 1  # each tree's newest node: no children yet
    actions = torch.tensor([0, 1, 2, 3])
    create = (tree.children[torch.arange(B), nodes, actions] < 0) & torch.tensor([True, True, False, True])
    assert create.any()

    def make(numpy: bool):
        t = {k: v.clone() for k, v in (("tokens", tree.tokens), ("node_at", tree.node_at), ("length", tree.length),
                                       ("children", tree.children), ("child_token", tree.child_token),
                                       ("terminal", tree.terminal), ("num_nodes", tree.num_nodes))}
        flat = [t["tokens"].view(B * N, L), t["node_at"].view(B * N, L), t["length"].view(-1),
                t["children"].view(B * N, K), t["child_token"].view(B * N, K), t["terminal"].view(-1), t["num_nodes"],
                nodes, actions, create]
        child = _add_children(*(x.numpy() for x in flat) if numpy else flat, eos_id=EOS)
        return torch.as_tensor(child), t

    (c1, t1), (c2, t2) = make(False), make(True)
    assert torch.equal(c1, c2) and all(torch.equal(t1[k], t2[k]) for k in t1)
    assert torch.equal(t1["num_nodes"], tree.num_nodes + create.long())
