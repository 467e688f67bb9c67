import itertools

import numpy as np
import pytest
import torch

from emergent.agents.model import ModelConfig
from emergent.agents.reward_net import RewardNet, ValueBatch, auc, expected_calibration_error, value_loss
from emergent.envs import TOKENIZER


def brute_auc(scores, labels):
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p, n in itertools.product(pos, neg)]
    return sum(pairs) / len(pairs)


def test_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    assert auc(scores, labels) == pytest.approx(brute_auc(scores, labels))
    assert auc(labels.astype(float), labels) == 1.0
    assert np.isnan(auc(scores, np.ones(60, bool)))


def test_ece():
    assert expected_calibration_error(np.array([0.9] * 10), np.array([1] * 9 + [0])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([0, 0])) == pytest.approx(1.0)


def test_reward_net_learns_to_separate_outcomes_and_starts_neutral():
    torch.manual_seed(0)
    net = RewardNet(ModelConfig(n_layer=1, n_head=2, d_model=32, max_len=16), TOKENIZER.vocab_size)
    good, bad = TOKENIZER.encode("^1+1=2$"), TOKENIZER.encode("^1+1=3$")
    inputs = torch.from_numpy(np.stack([good, bad]))
    mask = torch.zeros(2, 7)
    mask[:, 4:] = 1  # from the last prompt token to EOS
    batch = ValueBatch(inputs, mask, torch.tensor([1.0, 0.0]))
    lengths = torch.tensor([7, 7])
    assert torch.allclose(net.value_at(inputs, lengths), torch.full((2,), 0.5))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        value_loss(net, batch).backward()
        opt.step()
    v = net.value_at(inputs, lengths)
    assert v[0] > 0.9 and v[1] < 0.1
    # the shared prefix "^1+1=" cannot tell the two apart: it sits near the base rate
    logits = net(inputs).detach()
    assert float(torch.sigmoid(logits[0, 4])) == pytest.approx(float(torch.sigmoid(logits[1, 4])))


def test_reward_net_flops_swap_the_lm_head_for_a_scalar_head():
    net = RewardNet(ModelConfig(n_layer=2, n_head=2, d_model=32, max_len=16), TOKENIZER.vocab_size)
    lm = net.trunk.flops_per_token(10, backward=False)
    assert net.flops_per_token(10, backward=False) == lm - 2 * 32 * TOKENIZER.vocab_size + 2 * 32
