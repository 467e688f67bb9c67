"""The length axis: the frontier metric on hand-made per-length scores."""

import numpy as np

from emergent import tags
from emergent.platform.evaluate import SplitResult, frontier, scalars


def test_frontier_is_the_last_length_of_the_unbroken_run_above_the_threshold():
    assert frontier({1: 1.0, 2: 0.995, 3: 0.99, 4: 0.7, 5: 1.0}, 0.99) == 3  # 5 passes, but 4 broke the run
    assert frontier({1: 1.0, 2: 1.0}, 0.99) == 2
    assert frontier({1: 0.5, 2: 1.0}, 0.99) == 0  # the first length fails: none reached
    assert frontier({5: 1.0, 6: 0.98, 7: 1.0}, 0.99) == 5  # a split starting above 1 counts from there
    assert frontier({5: 1.0, 6: 0.98}, 0.95) == 6  # the threshold is the option's
    assert frontier({1: 1.0, 3: 1.0}, 0.99) == 1  # a missing length ends the run


def split(exact_by_length: dict[int, float]) -> SplitResult:
    by = {d: {"exact_match": e, "token_accuracy": e, "edit_distance": 0.0} for d, e in exact_by_length.items()}
    overall = {
        "exact_match": float(np.mean(list(exact_by_length.values()))),
        "token_accuracy": 0.0,
        "edit_distance": 0.0,
    }
    return SplitResult(overall, by)


def test_the_held_out_frontier_runs_from_the_test_lengths_into_the_extrapolation_lengths():
    results = {
        "train": split({1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}),
        "test": split({1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}),
        "extrapolate": split({5: 1.0, 6: 0.995, 7: 0.9, 8: 1.0}),
    }
    got = scalars(results, 0.99)
    assert got[tags.eval_tag("test", tags.EVAL_FRONTIER)] == 4
    assert got[tags.eval_tag("extrapolate", tags.EVAL_FRONTIER)] == 6
    assert got[tags.EVAL_LENGTH_FRONTIER] == 6
    # a test length below the threshold caps it, whatever the longer lengths reach
    results["test"] = split({1: 1.0, 2: 0.5, 3: 1.0, 4: 1.0})
    assert scalars(results, 0.99)[tags.EVAL_LENGTH_FRONTIER] == 1
    # without the test split it starts at the extrapolation range (the training range taken as reached)
    del results["test"]
    assert scalars(results, 0.99)[tags.EVAL_LENGTH_FRONTIER] == 6


# -- self-labelling rounds (train.method=self_label) -------------------------------------------------


def planted(policy, prompts, samples, *, temperature, generator, device):
    """A wrong but consistent labeller standing in for the policy: a + b + 1, reversed,
    for every sample (so a vote agrees with it)."""
    from emergent.agents.rollouts import Rollouts

    labels = [str(sum(map(int, p.rstrip("=").split("+"))) + 1)[::-1] for p in prompts]
    rows = np.repeat(np.arange(len(prompts)), samples)
    return Rollouts(rows, [prompts[r] for r in rows], [labels[r] for r in rows], np.ones(len(rows), bool), 1e6)


def planted_up_to(longest):
    """``planted``, whose samples (temperature > 0) give "0" on operands longer than
    ``longest`` digits: consistent up to there, unsure above."""

    def labeller(policy, prompts, samples, *, temperature, generator, device):
        out = planted(policy, prompts, samples, temperature=temperature, generator=generator, device=device)
        if temperature > 0:
            out.completions[:] = [
                "0" if max(map(len, p.rstrip("=").split("+"))) > longest else c
                for p, c in zip(out.prompts, out.completions)
            ]
        return out

    return labeller


def self_label(tmp_path, *overrides):
    from conftest import TINY

    from emergent.platform.config import load_config
    from emergent.platform.experiment import Experiment

    cfg = load_config(
        None,
        [
            *TINY,
            "train.method=self_label",
            "self_label.round_steps=2",
            "self_label.problems=16",
            "train.steps=4",
            f"logdir={tmp_path}",
            *overrides,
        ],
    )
    return Experiment(cfg)


def test_a_round_trains_on_the_labels_the_model_wrote_never_on_gold_above_n(tmp_path, monkeypatch):
    import emergent.agents.self_label as sl

    monkeypatch.setattr(sl, "sample_rollouts", planted)
    exp = self_label(tmp_path)
    seen = []
    real = sl.encode_batch
    monkeypatch.setattr(sl, "encode_batch", lambda tok, p, c, n: seen.append(list(zip(p, c))) or real(tok, p, c, n))
    step = exp.train_step()
    method = exp.method
    assert method.round == 1 and method.difficulty == 3  # task.difficulty=[1,2]: the first round labels 3 digits
    assert len(method.buffer) == 16
    for prompt, label in method.buffer:  # every label is the planted model's, none is gold
        a, b = map(int, prompt.rstrip("=").split("+"))
        assert len(str(a)) == len(str(b)) == 3 and label == str(a + b + 1)[::-1] != str(a + b)[::-1]
    # the step trained on gold of [1, 2] (the stream's) and on those labels, nothing else
    batch = seen[-1]
    assert len(batch) == 16 and sum((p, c) in method.buffer for p, c in batch) == 8
    for prompt, completion in batch:
        if (prompt, completion) not in method.buffer:
            a, b = map(int, prompt.rstrip("=").split("+"))
            assert max(len(str(a)), len(str(b))) <= 2 and completion == str(a + b)[::-1]
    assert step.scalars["self_label/label_accuracy"] == 0.0 and step.scalars["self_label/difficulty"] == 3
    assert exp.ledger.parts["generate"] == 1e6  # the labelling's FLOPs count
    exp.train_step()
    assert exp.method.round == 1  # two steps per round
    exp.train_step()
    assert exp.method.round == 2 and exp.method.difficulty == 4 and len(exp.method.buffer) == 32


def test_noise_corrupts_labels_and_the_vote_filter_drops_what_the_samples_disagree_with(tmp_path, monkeypatch):
    import emergent.agents.self_label as sl

    monkeypatch.setattr(sl, "sample_rollouts", planted)
    exp = self_label(tmp_path, "self_label.noise=1.0")
    exp.train_step()
    assert len(exp.method.buffer) == 16 and all(
        c != planted(None, [p], 1, temperature=0, generator=None, device=None).completions[0]
        for p, c in exp.method.buffer
    )
    # with the vote, the noisy labels disagree with every sample: none is kept
    exp = self_label(tmp_path, "self_label.noise=1.0", "self_label.filter=vote", "run_name=vote")
    step = exp.train_step()
    assert exp.method.buffer == [] and step.scalars["self_label/kept_fraction"] == 0.0
    # the oracle keeps only right labels: the planted model has none
    exp = self_label(tmp_path, "self_label.filter=oracle", "run_name=oracle")
    exp.train_step()
    assert exp.method.buffer == []


def test_a_fast_round_labels_up_to_the_longest_self_consistent_difficulty(tmp_path, monkeypatch):
    # the planted labeller is consistent up to 5 digits: from n = 2, the first fast round
    # labels 3, 4 and 5 (fast_max 4 would allow 6); the next, where 6 falls short, adds 6 alone
    import emergent.agents.self_label as sl

    monkeypatch.setattr(sl, "sample_rollouts", planted_up_to(5))
    exp = self_label(tmp_path, "self_label.fast=true", "self_label.fast_probes=8", "self_label.problems=30")
    step = exp.train_step()
    method = exp.method
    assert method.round == 1 and method.difficulty == 5
    lengths = [max(map(len, p.rstrip("=").split("+"))) for p, _ in method.buffer]
    assert sorted(set(lengths)) == [3, 4, 5] and lengths.count(3) == lengths.count(4) == 10  # spread evenly
    assert step.scalars["self_label/difficulty"] == 5 and step.scalars["self_label/consistency"] == 1.0
    # the probes' generation counts: 4 candidate difficulties x 8 probes, greedy and 5 votes each,
    # then the labels (1e6 FLOPs a call in `planted`)
    assert exp.ledger.parts["generate"] == 3e6
    exp.train_step()
    step = exp.train_step()
    assert method.round == 2 and method.difficulty == 6 and step.scalars["self_label/consistency"] == 0.0
    assert len(method.buffer) == 60
    # without fast mode the same labeller moves one difficulty a round and logs no consistency
    exp = self_label(tmp_path, "run_name=slow")
    step = exp.train_step()
    assert exp.method.difficulty == 3 and "self_label/consistency" not in step.scalars


def test_label_filters_on_hand_made_labels():
    from emergent.agents.self_label import corrupt, keep_labels

    labels = ["123", "1234", "12", "1", "123"]
    finished = np.array([1, 1, 1, 1, 0], bool)
    assert keep_labels("none", labels, finished).tolist() == [1, 1, 1, 1, 0]
    assert keep_labels("length", labels, finished).tolist() == [1, 1, 1, 0, 0]  # commonest 3 (finished only)
    votes = [["123", "123", "9"], ["1", "2", "3"], ["12"] * 3, ["1"] * 3, ["123"] * 3]
    assert keep_labels("vote", labels, finished, votes=votes, threshold=0.6).tolist() == [1, 0, 1, 1, 0]
    assert keep_labels("oracle", labels, finished, right=np.array([0, 1, 1, 1, 1])).tolist() == [0, 1, 1, 1, 0]
    assert keep_labels("length+vote", labels, finished, votes=votes, threshold=0.6).tolist() == [1, 0, 1, 0, 0]
    # a fast round labels several difficulties: the commonest length is each one's own
    two = ["12", "123", "12", "12345", "1234", "12345", "12345"]
    by = np.array([2, 2, 2, 4, 4, 4, 4])
    assert keep_labels("length", two, np.ones(7, bool), difficulty=by).all()
    assert keep_labels("length", two, np.ones(7, bool)).tolist() == [0, 0, 0, 1, 1, 1, 1]  # one group: commonest 5
    rng = np.random.default_rng(0)
    for _ in range(50):
        bad = corrupt("5831", rng)
        assert len(bad) == 4 and bad != "5831" and sum(a != b for a, b in zip(bad, "5831")) == 1


def test_a_self_labelling_run_through_the_entry_point_resumes_where_it_stopped(tmp_path, monkeypatch):
    # the real CLI; a stopped run resumes (the buffer, the round and the method's draws are in
    # the checkpoint): a run of 4 steps equals one of 2 steps resumed to 4. The labeller is
    # the planted one: a tiny untrained model never ends a label, and an empty buffer would
    # make a resume that lost it look exact
    import emergent.agents.self_label as sl
    from emergent.platform.cli import main

    monkeypatch.setattr(sl, "sample_rollouts", planted)

    from conftest import TINY, scalars

    args = [
        *TINY,
        "train.method=self_label",
        "self_label.round_steps=2",
        "self_label.problems=16",
        "checkpoint_every=2",
        "eval.every=2",
        "train.log_every=1",
        f"logdir={tmp_path}",
    ]
    assert main(["train", *args, "train.steps=4", "run_name=whole"]) == 0
    # stopped after round 1 (within warm-up, so the learning rate does not depend on train.steps)
    assert main(["train", *args, "train.steps=2", "run_name=split"]) == 0
    assert main(["train", *args, "train.steps=4", "run_name=split", "resume=true"]) == 0
    whole, split = (
        scalars(tmp_path / "quickstart" / "whole", perf=False),
        scalars(tmp_path / "quickstart" / "split", perf=False),
    )
    assert whole["self_label/round"][-1][1] == 2 and whole["self_label/difficulty"][-1][1] == 4
    assert whole["self_label/buffer"][-1][1] == 32
    assert set(whole) == set(split)
    for tag in whole:
        assert whole[tag] == split[tag], tag
