import itertools

import numpy as np
import pytest
import torch

from emergent import tags
from emergent.agents.model import ModelConfig
from emergent.agents.records import Experience
from emergent.agents.reward_net import RewardNet, RewardNetConfig, value_loss
from emergent.agents.reward_trainer import RewardTrainer, encode_values, step_ends
from emergent.envs import TOKENIZER
from emergent.platform.metrics import auc, expected_calibration_error


def brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p, n in itertools.product(pos, neg)]
    return sum(pairs) / len(pairs)


def right_and_wrong(prompts, completions, **fields) -> Experience:
    """One problem's two finished traces, the first labelled right, the second wrong, none held out."""
    return Experience(
        prompts,
        np.zeros(2, int),
        completions,
        finished=np.ones(2, bool),
        labels=np.array([1.0, 0.0]),
        scores=np.array([1.0, 0.0]),
        heldout=np.zeros(2, bool),
        heldout_probs=np.zeros(0),
        flops={},
        **fields,
    )


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
    good_and_bad = right_and_wrong(["1+1="], ["2", "3"])
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


def test_step_targets_sit_at_each_steps_separator():
    """``^`` + prompt + completion: completion index i is row index 1 + len(prompt) + i; a
    step's label sits at its ',' (the last step's at '>'); no answer separator, no steps."""
    assert step_ends("17*4=68,68-1=67>(17*4)-1") == [7, 15]
    assert step_ends("9/9=1>9/9") == [5]
    assert step_ends("17*4=68,68-") == []
    prompts, completions = ["1,4,17;67=", "1,4,17;67="], ["17*4=68,68-1=67>(17*4)-1", "17*4=69,69-1=68>8"]
    batch = encode_values(prompts, completions, np.array([1.0, 0.0]), 64, [(True, True), (False, True)])
    row = 1 + len(prompts[0])
    assert batch.step_mask[0].nonzero().squeeze(1).tolist() == [row + 7, row + 15]
    assert TOKENIZER.decode(batch.inputs[0, [row + 7, row + 15]].tolist()) == ",>"
    assert batch.step_labels[1, [row + 7, row + 15]].tolist() == [0.0, 1.0]
    assert batch.step_mask.sum() == 4 and batch.step_labels.sum() == 3
    # a trace without labels (a near miss, a held-out trace) trains no step
    none = encode_values(prompts, completions, np.array([1.0, 0.0]), 64, [None, (False, True)])
    assert none.step_mask[0].sum() == 0
    with pytest.raises(ValueError, match="1 step labels for a completion with 2 steps"):
        encode_values(prompts[:1], completions[:1], np.array([1.0]), 64, [(True,)])


def test_step_head_learns_which_step_is_false_and_only_adds_to_the_value_loss():
    """The step head learns the step checker's labels through the trainer; without step labels
    in a batch the loss is the value loss alone (the head's term is empty, not a pull to 0.5)."""
    torch.manual_seed(0)
    cfg = RewardNetConfig(lr=1e-2, batch_size=8, updates_per_iter=6, heldout_fraction=0.0)
    net = RewardNet(ModelConfig(n_layer=1, n_head=2, d_model=32, max_len=32), TOKENIZER.vocab_size, step_head=True)
    trainer = RewardTrainer(net, cfg, total_steps=10, device=torch.device("cpu"))
    prompts, completions = ["1,1;2="], ["1+1=2>1+1", "1+1=3>1+1"]
    plain = encode_values(prompts * 2, completions, np.array([1.0, 0.0]), 32)
    assert value_loss(net, plain).item() == pytest.approx(np.log(2), rel=1e-5)  # both heads start at 0.5
    exp = right_and_wrong(prompts, completions, steps=[(True,), (False,)])
    rng = np.random.default_rng(0)
    for _ in range(10):
        trainer.update(exp, rng)
    assert all(len(t.steps) == 1 for t in trainer.replay.items)
    _, step_logits = net.both(plain.inputs)
    at = 1 + len(prompts[0]) + step_ends(completions[0])[0]
    p_true = torch.sigmoid(step_logits[:, at])
    assert p_true[0] > 0.9 and p_true[1] < 0.1
    value, process, flops = trainer.process_scores(prompts * 2, completions)
    assert np.array_equal(value, trainer.score(prompts * 2, completions)[0])  # score's values, from one forward
    assert flops > 0 and process == pytest.approx(value * p_true.detach().numpy(), rel=1e-5)
    # a checkpoint written before step labels (four fields a trace) still loads
    trainer.replay.load_state_dict([row[:4] for row in trainer.replay.state_dict()])
    assert trainer.replay.items[0].steps is None


def test_a_step_drill_trains_the_step_head_alone():
    """``values`` False (a step drill, ``Trace.value``): the row's step labels train the step
    head and its value mask is empty, so the value head gets no gradient from it; the replay
    keeps the flag through a checkpoint, and a row from before it loads as a traced value."""
    torch.manual_seed(0)
    net = RewardNet(ModelConfig(n_layer=1, n_head=2, d_model=32, max_len=48), TOKENIZER.vocab_size, step_head=True)
    prompts, completions = ["1,4,17;67="] * 2, ["17*4=68,68-1=66>", "17*4=68,68-1=67>(17*4)-1"]
    b = encode_values(prompts, completions, np.array([0.0, 1.0]), 48, [(True, False), (True, True)], [False, True])
    assert b.mask[0].sum() == 0 and b.mask[1].sum() > 0 and b.step_mask[0].sum() == 2
    drill = encode_values(prompts[:1], completions[:1], np.zeros(1), 48, [(True, False)], [False])
    value_loss(net, drill).backward()
    assert net.head.weight.grad.abs().sum() == 0 and net.step_head.weight.grad.abs().sum() > 0
    from emergent.agents.records import Replay, Trace

    replay = Replay(4)
    replay.add([Trace(prompts[0], completions[0], 0.0, steps=(True, False), value=False)])
    again = Replay(4)
    again.load_state_dict(replay.state_dict())
    assert again.items == replay.items
    again.load_state_dict([row[:5] for row in replay.state_dict()])
    assert again.items[0].value
