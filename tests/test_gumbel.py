"""Gumbel MuZero's root: known answers for sequential halving, the completed-Q policy and
the move it plays, through the real search on hand-built bandits (as mctx's tests)."""

import numpy as np
import pytest
import torch
from test_search import EOS, TableEvaluator, V

from emergent.agents import gumbel
from emergent.agents.search import SearchConfig, search
from emergent.envs import TOKENIZER


def test_the_halving_schedule_is_mctx_s():
    # four actions, eight simulations: one visit each, then two more to each of the best two
    assert gumbel.considered_visit_sequence(4, 8) == (0, 0, 0, 0, 1, 1, 2, 2)
    # sixteen actions, 32 simulations: log2(16) = 4 phases of 32 / (4 * considered) visits each
    assert gumbel.considered_visit_sequence(16, 32) == (0,) * 16 + (1,) * 8 + (2,) * 4 + (3,) * 4
    assert gumbel.considered_visit_sequence(1, 3) == (0, 1, 2)  # one action takes every simulation
    table = gumbel.considered_visit_table(4, 8)
    assert table.shape == (5, 8) and tuple(table[4]) == (0, 0, 0, 0, 1, 1, 2, 2)
    assert tuple(table[2]) == gumbel.considered_visit_sequence(2, 8)


def test_completed_q_fills_unvisited_children_with_the_mixed_value_and_rescales():
    q = torch.tensor([[0.8, 0.0, 0.2, 0.0]])
    n = torch.tensor([[2.0, 0.0, 1.0, 0.0]])
    prior = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    value = torch.tensor([0.5])
    # mixed value: (v + sum N * sum_{visited} p q / sum_{visited} p) / (sum N + 1)
    weighted = (0.4 * 0.8 + 0.2 * 0.2) / (0.4 + 0.2)
    mixed = (0.5 + 3 * weighted) / 4
    raw = gumbel.completed_q(q, n, prior, value, rescale=False)
    torch.testing.assert_close(raw, torch.tensor([[0.8, mixed, 0.2, mixed]]))
    scaled = gumbel.completed_q(q, n, prior, value)
    torch.testing.assert_close(scaled, torch.tensor([[1.0, (mixed - 0.2) / 0.6, 0.0, (mixed - 0.2) / 0.6]]))


def bandit(values, *, sims, batch=1, scale=0.0, seed=0, considered=16, prior=None, rescale=True):
    """One move over K terminal arms (tokens 3, 4, ...) valued by ``values``."""
    K = len(values)
    prior = prior or [1 / K] * K
    ev = TableEvaluator({(): dict(zip(range(3, 3 + K), prior))}, {(3 + a,): v for a, v in enumerate(values)}, k=K)
    cfg = SearchConfig(
        num_simulations=sims,
        leaves_per_call=1,
        top_k=K,
        root="gumbel",
        gumbel_scale=scale,
        max_considered=considered,
        rescale_values=rescale,
    )
    return search(
        [np.array([1])] * batch,
        ev,
        cfg,
        max_len=2,
        vocab_size=V,
        eos_id=EOS,
        generator=torch.Generator().manual_seed(seed),
    )


def test_sequential_halving_visits_and_plays_the_best_arm_of_a_known_bandit():
    values = [0.2, 0.9, 0.5, 0.4]
    out = bandit(values, sims=8)
    # phase 1: each of the four arms once; phase 2: the best two (0.9, 0.5) twice more each
    torch.testing.assert_close(out.visit_probs[0, 0, 3:7], torch.tensor([1, 3, 3, 1]) / 8)
    assert out.tokens[0, 1] == 4  # the best arm is played
    # the improved policy by hand: softmax(log prior + (maxvisit_init + max N) * value_scale * rescaled Q)
    qhat = (np.array(values) - 0.2) / 0.7
    logits = np.log(0.25) + (50 + 3) * 0.1 * qhat
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    torch.testing.assert_close(out.policy[0, 0, 3:7], torch.tensor(expected, dtype=torch.float32))
    assert out.informative[0, 0]  # every arm's verdict lies below the root
    # without rescaling (the default: values are P(correct) already) sigma takes Q as it is
    raw = bandit(values, sims=8, rescale=False)
    logits = np.log(0.25) + (50 + 3) * 0.1 * np.array(values)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    torch.testing.assert_close(raw.policy[0, 0, 3:7], torch.tensor(expected, dtype=torch.float32))


def test_with_gumbel_noise_the_move_played_is_a_sample_of_the_improved_policy():
    # one arm right, three wrong, the prior favouring a wrong one. Every arm is considered and
    # visited alike in the first phase, so the Gumbel-max trick makes the move played a draw
    # from softmax(logits + sigma(q)): the right arm with p = 0.15 e^5.3 / (0.15 e^5.3 + 0.85)
    out = bandit([0.0, 1.0, 0.0, 0.0], sims=8, batch=2000, scale=1.0, prior=[0.55, 0.15, 0.15, 0.15])
    p = 0.15 * np.exp(5.3) / (0.15 * np.exp(5.3) + 0.85)
    assert float((out.tokens[:, 1] == 4).float().mean()) == pytest.approx(p, abs=0.012)  # 3 binomial sd
    torch.testing.assert_close(out.policy[:, 0, 4], torch.full((2000,), p, dtype=torch.float32))
    # without search the draw samples the prior: the favourite wins 55 % of the time
    prior = bandit([0.0, 1.0, 0.0, 0.0], sims=0, batch=2000, scale=1.0, prior=[0.55, 0.15, 0.15, 0.15])
    assert float((prior.tokens[:, 1] == 3).float().mean()) == pytest.approx(0.55, abs=0.034)  # 3 sd


def test_only_the_top_m_of_gumbel_plus_logits_are_considered():
    # two of four arms considered, no noise: the two most probable, even though an
    # unconsidered arm is the best; the considered ones take every simulation
    out = bandit([0.1, 0.3, 1.0, 0.0], sims=6, considered=2, prior=[0.4, 0.3, 0.2, 0.1])
    visits = out.visit_probs[0, 0, 3:7] * 6
    torch.testing.assert_close(visits, torch.tensor([3.0, 3.0, 0.0, 0.0]))
    assert out.tokens[0, 1] == 4  # of the two, the better


def test_a_gumbel_root_refuses_dirichlet_noise_and_the_static_path():
    with pytest.raises(ValueError, match="search.root=gumbel"):
        SearchConfig(root="gumbel", dirichlet_fraction=0.25).validate()
    with pytest.raises(ValueError, match="search.root=gumbel"):
        SearchConfig(root="gumbel", static=True).validate()
    with pytest.raises(ValueError, match="search.root"):
        SearchConfig(root="alphago").validate()


# -- leaves valued by a rollout's verdict ----------------------------------------------------------


def test_a_rollout_valued_leaf_is_the_verdict_of_the_completion_it_stands_for():
    from test_search import tiny_networks

    from emergent.agents.policy_value import PolicyValueEvaluator, state_verifier
    from emergent.agents.search import States

    policy, value = tiny_networks("learned")
    rng = np.random.default_rng(3)
    prompts = [np.concatenate([[1], rng.integers(3, V, size=n)]) for n in (3, 5, 4)]
    # a verdict that depends on the whole completion: its length is odd
    judge = lambda rows, completions: np.array([len(c) % 2 for c in completions], dtype=float)  # noqa: E731
    ev = PolicyValueEvaluator(
        policy,
        value,
        top_k=4,
        verifier=state_verifier([len(p) for p in prompts], judge),
        leaf_value="rollout",
        kv_cache=False,
    )  # the states are no tree's: no kept keys
    # states some tokens into each problem: prompt + a few tokens
    L = policy.cfg.max_len
    tokens = torch.zeros(5, L, dtype=torch.long)
    rows, lengths = torch.tensor([0, 1, 2, 0, 1]), []
    for i, r in enumerate(rows.tolist()):
        state = np.concatenate([prompts[r], rng.integers(3, V, size=i + 1)])
        tokens[i, : len(state)] = torch.as_tensor(state)
        lengths.append(len(state))
    states = States(rows, torch.arange(5) + 1, tokens, torch.tensor(lengths), torch.full_like(tokens, -1))
    got = ev.rollout_value(states)
    for i, r in enumerate(rows.tolist()):  # one state at a time: greedy completion, decoded, judged
        gen = policy.generate([tokens[i, : lengths[i]].numpy()], L, eos_id=EOS, pad_id=TOKENIZER.pad_id)
        full = np.concatenate([tokens[i, : lengths[i]].numpy(), gen.tokens[0, : int(gen.lengths[0])].numpy()])
        completion = TOKENIZER.decode(full[len(prompts[r]) :].tolist())
        assert float(got[i]) == judge([r], [completion])[0] * float(gen.finished[0]), i
    assert ev.flops > 0
    # through the evaluator's expand: the value is the verdict, and flagged as one
    out = ev.expand(states)
    torch.testing.assert_close(out.value, got)
    assert out.verdict.all()
    mixed = PolicyValueEvaluator(
        policy, value, top_k=4, verifier=ev.verifier, leaf_value="mix", rollout_weight=0.25, kv_cache=False
    )
    net = PolicyValueEvaluator(policy, value, top_k=4, verifier=ev.verifier, kv_cache=False)
    torch.testing.assert_close(mixed.expand(states).value, 0.75 * net._value(states) + 0.25 * got)


def test_moves_are_informative_only_where_a_verdict_lies_below_the_root():
    # two levels; the terminal verdicts sit at depth 2. One simulation per move reaches depth 1
    # only (each simulation deepens the tree by one node): the first move sees no verdict
    priors = {(): {3: 0.5, 4: 0.5}, (3,): {5: 0.5, 6: 0.5}, (4,): {5: 0.5, 6: 0.5}}
    values = {(3, 5): 0.0, (3, 6): 1.0, (4, 5): 1.0, (4, 6): 0.0}
    few = search(
        [np.array([1])],
        TableEvaluator(priors, values, k=2),
        SearchConfig(num_simulations=2, leaves_per_call=1, top_k=2),
        max_len=3,
        vocab_size=V,
        eos_id=EOS,
    )
    assert few.informative[0].tolist() == [False, True]
    many = search(
        [np.array([1])],
        TableEvaluator(priors, values, k=2),
        SearchConfig(num_simulations=8, leaves_per_call=1, top_k=2),
        max_len=3,
        vocab_size=V,
        eos_id=EOS,
    )
    assert many.informative[0].tolist() == [True, True]

    # a learned terminal value is no verdict
    class Learned(TableEvaluator):
        terminal_from_network = True

    learned = search(
        [np.array([1])],
        Learned(priors, values, k=2),
        SearchConfig(num_simulations=8, leaves_per_call=1, top_k=2, terminal_value="learned"),
        max_len=3,
        vocab_size=V,
        eos_id=EOS,
    )
    assert not learned.informative.any()


class ValuedTable(TableEvaluator):
    """A hand-built tree whose non-terminal states the 'network' values from a table."""

    def __init__(self, priors, values, k, net, mixed=False):
        super().__init__(priors, values, k)
        self.net, self.mixed = net, mixed

    def expand(self, states):
        out = super().expand(states)
        value = torch.tensor([self.net.get(self._key(t, int(n)), 0.5) for t, n in zip(states.tokens, states.lengths)])
        if self.mixed:  # leaf_value=mix: the value leans the opposite way, the net's own part is the table's
            return out._replace(value=1.0 - value, net_value=value, verdict_value=value)
        return out._replace(value=value)


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize(
    "net,auc", [({(3,): 0.8, (4,): 0.2}, 1.0), ({(3,): 0.2, (4,): 0.8}, 0.0), ({(3,): 0.5, (4,): 0.5}, 0.5)]
)
def test_the_sibling_pair_count_compares_the_net_s_order_of_root_children_with_the_verdicts(net, auc, mixed):
    # every continuation of 3 is right, of 4 wrong: one pair at the first move (the second
    # move's children are terminal: their values are verdicts, not the net's). With mixed
    # leaf values the pair reads the net's own part (Expansion.net_value), not the mix
    priors = {(): {3: 0.5, 4: 0.5}, (3,): {5: 0.5, 6: 0.5}, (4,): {5: 0.5, 6: 0.5}}
    values = {(3, 5): 1.0, (3, 6): 1.0, (4, 5): 0.0, (4, 6): 0.0}
    out = search(
        [np.array([1])],
        ValuedTable(priors, values, 2, net, mixed),
        SearchConfig(num_simulations=12, leaves_per_call=1, top_k=2),
        max_len=3,
        vocab_size=V,
        eos_id=EOS,
    )
    assert float(out.sibling_pairs[0]) == 1.0 and float(out.sibling_agree[0]) == auc


@pytest.mark.parametrize("samples", [0, 4])
@pytest.mark.parametrize("target_first,expected", [(True, (1, 0, 0)), (False, (0, 1, 0))])
def test_the_improvement_win_rate_judges_both_choices_completed(target_first, expected, samples):
    # one informative move where the improved policy and the prior disagree: EOS (the empty
    # completion, which this verifier accepts) against a digit (completed greedily: never empty)
    from test_search import tiny_networks

    from emergent.agents.improvement import improvement_outcomes
    from emergent.agents.search import SearchOutput

    policy, _ = tiny_networks("learned")
    digit = TOKENIZER.encode("7")[0]
    eos_first, other = (EOS, digit) if target_first else (digit, EOS)
    tokens = torch.zeros(1, policy.cfg.max_len, dtype=torch.long)
    tokens[0, :3] = torch.tensor([1, 5, 6])
    target = torch.zeros(1, 1, V)
    target[0, 0, eos_first] = 1.0
    out = SearchOutput(
        tokens=tokens,
        length=torch.tensor([3]),
        prompt_length=torch.tensor([3]),
        visit_probs=target,
        policy=target,
        moves=torch.tensor([1]),
        searched=torch.tensor([[True]]),
        informative=torch.tensor([[True]]),
        prior_token=torch.tensor([[other]]),
    )
    calls = []

    def verify(rows, comps):
        calls.append(len(rows))
        return np.array([c == "" for c in comps])

    gen = torch.Generator().manual_seed(0)
    judged = improvement_outcomes(policy, out, verify, samples=samples, generator=gen)
    assert tuple(judged) == expected
    assert calls == [2 * max(samples, 1)]  # each choice, completed once greedily or `samples` times
    # both choices as often right (never): a tie, not a win
    tie = improvement_outcomes(policy, out, lambda rows, comps: np.zeros(len(rows)), samples=samples, generator=gen)
    assert tuple(tie) == (0, 0, 1)
    agree = out._replace(prior_token=torch.tensor([[eos_first]]))  # no disagreement: nothing to judge
    assert tuple(improvement_outcomes(policy, agree, lambda rows, comps: np.ones(len(rows)))) == (0, 0, 0)


class MixedRollouts(TableEvaluator):
    """``leaf_value=mix`` by hand: each non-terminal state's rollout verdict is right, its
    network part differs (0.9 under token 3, 0.1 under 4), the mixed value is their mean."""

    def expand(self, states):
        out = super().expand(states)
        net = torch.tensor([0.9 if int(t[1]) == 3 else 0.1 for t in states.tokens])
        verdict = torch.ones(len(net))
        return out._replace(
            value=(net + verdict) / 2,
            verdict=torch.ones(len(net), dtype=torch.bool),
            net_value=net,
            verdict_value=verdict,
        )


def test_sibling_pairs_compare_verdicts_below_not_the_mixed_values():
    # every verdict below either root child is right: no pair has different mean verdicts,
    # however the mixed values (which carry the network's part) differ. Averaging the mixed
    # values instead would count a pair the network wins by construction
    priors = {(): {3: 0.5, 4: 0.5}, (3,): {5: 0.5, 6: 0.5}, (4,): {5: 0.5, 6: 0.5}}
    values = {(3, 5): 1.0, (3, 6): 1.0, (4, 5): 1.0, (4, 6): 1.0}
    out = search(
        [np.array([1])],
        MixedRollouts(priors, values, 2),
        SearchConfig(num_simulations=12, leaves_per_call=1, top_k=2),
        max_len=3,
        vocab_size=V,
        eos_id=EOS,
    )
    assert bool(out.informative[0, 0]) and float(out.sibling_pairs[0]) == 0.0
