import itertools

import numpy as np
import pytest
import torch

from emergent import tags
from emergent.agents.model import ModelConfig
from emergent.agents.records import Experience
from emergent.agents.reward_net import RewardNet, RewardNetConfig
from emergent.agents.reward_trainer import RewardTrainer
from emergent.envs import TOKENIZER
from emergent.platform.metrics import auc, expected_calibration_error


def brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
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
    """Through the trainer every self-improver uses: its replay, optimiser and value loss."""
    torch.manual_seed(0)
    cfg = RewardNetConfig(lr=1e-2, batch_size=8, updates_per_iter=6, heldout_fraction=0.0)
    net = RewardNet(ModelConfig(n_layer=1, n_head=2, d_model=32, max_len=16), TOKENIZER.vocab_size)
    trainer = RewardTrainer(net, cfg, total_steps=10, device=torch.device("cpu"))
    assert trainer.score(["1+1=", "1+1="], ["2", "3"])[0] == pytest.approx([0.5, 0.5])  # no opinion yet
    good_and_bad = Experience(
        ["1+1="],
        np.zeros(2, int),
        ["2", "3"],
        finished=np.ones(2, bool),
        labels=np.array([1.0, 0.0]),
        scores=np.array([1.0, 0.0]),
        heldout=np.zeros(2, bool),
        heldout_probs=np.zeros(0),
        flops={},
    )
    rng = np.random.default_rng(0)
    for _ in range(10):
        flops, scalars = trainer.update(good_and_bad, rng)
        assert flops > 0 and tags.REWARD_LOSS in scalars
    assert len(trainer.replay) == 20  # every trace not held out, each iteration
    v, _ = trainer.score(["1+1=", "1+1="], ["2", "3"])
    assert v[0] > 0.9 and v[1] < 0.1
    # the shared prefix "^1+1=" cannot tell the two apart: the prompt's value is one number
    at_prompt, _ = trainer.score(["1+1=", "1+1="], ["2", "3"], at_prompt=True)
    assert at_prompt[0] == pytest.approx(at_prompt[1])


def test_reward_net_flops_swap_the_lm_head_for_a_scalar_head():
    net = RewardNet(ModelConfig(n_layer=2, n_head=2, d_model=32, max_len=16), TOKENIZER.vocab_size)
    lm = net.trunk.flops_per_token(10, backward=False)
    assert net.flops_per_token(10, backward=False) == lm - 2 * 32 * TOKENIZER.vocab_size + 2 * 32
