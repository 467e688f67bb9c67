"""Self-improvement: no gold access, the FLOP ledger, determinism, the learning signal."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import SEARCH, SHARED, SMALL, TINY, scalars

from emergent import tags
from emergent.agents.records import Prompts
from emergent.agents.reward_trainer import encode_values
from emergent.agents.rollouts import majority_labels
from emergent.platform.config import load_config
from emergent.platform.experiment import Experiment, Oracle
from emergent.platform.local import train_local

SELF_IMPROVEMENT = ["expert_iteration", "policy_gradient", "alphazero"]


def small(method: str) -> list[str]:
    """SMALL for ``method``: alphazero searches one trace per problem instead of sampling."""
    if method == "alphazero":
        return [*(a for a in SMALL if not a.startswith("improve.samples=")), f"train.method={method}", *SEARCH]
    return [*SMALL, f"train.method={method}"]


def test_majority_labels():
    rows = np.array([0, 0, 0, 1, 1])
    comps = ["x>12", "y>12", "z>7", "a>3", "b>4"]
    assert majority_labels(rows, comps).tolist() == [1, 1, 0, 1, 0]


def test_encode_values_marks_states_from_prompt_end_to_eos():
    from emergent.envs import TOKENIZER

    b = encode_values(["1+1=", "12+3="], ["2", "51"], np.array([1, 0]), max_len=16)
    assert TOKENIZER.decode(b.inputs[1][b.mask[1].bool()]) == "=51$"
    # a trace that filled the context has no EOS to score: its last token is the final state
    b = encode_values(["1+1="], ["2" * 11], np.array([0]), max_len=16)
    assert b.inputs.shape[1] == 16 and TOKENIZER.decode(b.inputs[0][b.mask[0].bool()])[-1] == "2"


class RaisingOracle(Oracle):
    def __call__(self, rows, completions):
        raise AssertionError("the verifier was called on a training problem")


def test_majority_vote_never_calls_the_verifier(tmp_path, monkeypatch):
    import emergent.platform.experiment as experiment

    monkeypatch.setattr(experiment, "Oracle", RaisingOracle)
    cfg = load_config(
        None,
        [
            *SMALL,
            "train.method=expert_iteration",
            "improve.label_source=majority_vote",
            "train.steps=3",
            f"logdir={tmp_path}",
        ],
    )
    train_local(cfg)  # would raise if any training problem's verifier were consulted
    cfg = load_config(
        None,
        [
            *SMALL,
            "train.method=expert_iteration",
            "improve.label_source=verifier",
            "train.steps=1",
            f"logdir={tmp_path}",
            "run_name=v",
        ],
    )
    with pytest.raises(AssertionError, match="verifier was called"):
        train_local(cfg)  # and the same guard does fire when the verifier is used


@pytest.mark.parametrize("method", ["supervised", *SELF_IMPROVEMENT])
def test_a_method_sees_prompts_and_a_verifier_and_gold_only_if_it_learns_from_it(method, tmp_path, monkeypatch):
    args = TINY if method == "supervised" else small(method)
    exp = Experiment(load_config(None, [*args, f"train.method={method}", "train.steps=1", f"logdir={tmp_path}"]))
    drawn, seen = [], []
    next_problems, collect = exp.next_problems, exp.method.collect
    monkeypatch.setattr(exp, "next_problems", lambda: drawn.extend(next_problems()) or drawn)
    monkeypatch.setattr(exp.method, "collect", lambda batch: seen.append(batch) or collect(batch))
    exp.train_step()
    (batch,) = seen
    fields = {f.name for f in dataclasses.fields(batch)}
    assert type(batch) is Prompts and fields == {"prompts", "verify", "gold", "check_steps", "drill_steps"}
    # addition (reversed) has no step checker: nothing but verdicts
    assert batch.check_steps is None and batch.drill_steps is None
    assert batch.prompts == [p.prompt for p in drawn]
    if method == "supervised":
        assert batch.gold == [p.trace for p in drawn]
    else:  # no gold; the answers reach it only as the verifier's verdicts on completions
        assert batch.gold is None
        rows = np.arange(len(drawn))
        assert batch.verify(rows, [p.trace for p in drawn]).tolist() == [1.0] * len(drawn)
        assert batch.verify(rows, ["9" * 30] * len(drawn)).tolist() == [0.0] * len(drawn)


def test_supervised_ledger_matches_the_analytic_count(tmp_path, monkeypatch):
    """compute/total_flops of a supervised run = 6 N tokens + 12 L d T tokens, within 5 %.

    N counts every parameter (embeddings, norms); the ledger counts the matmuls that run.
    At the quickstart's size the two agree to < 1 %; at toy widths embeddings dominate N.
    """
    cfg = load_config(
        None,
        [
            *TINY,
            "model.n_layer=2",
            "model.d_model=128",
            "model.n_head=4",
            "model.max_len=64",
            "train.steps=6",
            f"logdir={tmp_path}",
        ],
    )
    exp = Experiment(cfg)
    tokens_at = []
    import emergent.agents.supervised as supervised

    encode = supervised.encode_batch

    def counting(*args, **kw):
        batch = encode(*args, **kw)
        tokens_at.append(batch.inputs.shape)
        return batch

    monkeypatch.setattr(supervised, "encode_batch", counting)
    for _ in range(6):
        exp.train_step()
    N = exp.model.num_params()
    L, d = cfg.model.n_layer, cfg.model.d_model
    analytic = sum(B * T * (6 * N + 12 * L * d * T) for B, T in tokens_at)
    assert exp.ledger.total == pytest.approx(analytic, rel=0.05)
    assert exp.ledger.parts["train"] == exp.ledger.total


@pytest.mark.parametrize("method", SELF_IMPROVEMENT)
def test_same_seed_same_metrics_and_a_full_ledger(method, tmp_path):
    series = []
    for name in ("a", "b"):
        cfg = load_config(
            None,
            [
                *small(method),
                "train.steps=4",
                "train.log_every=2",
                "eval.every=2",
                f"logdir={tmp_path}",
                f"run_name={name}",
            ],
        )
        train_local(cfg)
        series.append(scalars(cfg.run_dir, perf=False))
    assert series[0] == series[1]
    s = series[0]
    assert {tags.COMPUTE_TOTAL_FLOPS, tags.eval_tag("test", "exact_match"), tags.TRAIN_SAMPLE_ACCURACY} <= set(s)
    part = "compute/search_flops" if method == "alphazero" else "compute/generate_flops"
    assert s[part][-1][1] > 0 and s["compute/reward_flops"][-1][1] > 0
    total = s[tags.COMPUTE_TOTAL_FLOPS][-1][1]
    parts = sum(s[f"compute/{p}_flops"][-1][1] for p in ("train", "generate", "search", "reward"))
    assert total == pytest.approx(parts)


def test_init_from_a_supervised_checkpoint(tmp_path):
    sup = load_config(None, [*TINY, "train.steps=3", f"logdir={tmp_path}", "run_name=sup"])
    train_local(sup)
    ckpt = sup.run_dir / "last.pt"
    cfg = load_config(
        None, [*small("expert_iteration"), f"improve.init_from={ckpt}", f"logdir={tmp_path}", "run_name=ei"]
    )
    exp = Experiment(cfg)
    state = torch.load(ckpt, weights_only=True)
    for k, v in state["model"].items():
        assert torch.equal(exp.model.state_dict()[k], v)


@pytest.mark.parametrize("method", ["expert_iteration", "alphazero"])
def test_resume_restores_reward_net_and_replay(method, tmp_path):
    # a vote keeps the traces that agree with the majority: an untrained policy is right too
    # rarely for the verifier to keep any, and an empty replay would make this check vacuous
    vote = ["improve.label_source=majority_vote"] if method == "expert_iteration" else []
    base = [*small(method), *vote, f"logdir={tmp_path}"]
    cfg = load_config(None, [*base, "train.steps=2"])
    train_local(cfg)
    state = torch.load(cfg.run_dir / "last.pt", weights_only=True)  # the safe loader reads it all
    replay, reward = state["learner"]["replay"], state["learner"]["reward"]
    assert replay and reward["replay"]  # not vacuous: both replays hold traces after two steps
    resumed = Experiment(load_config(None, [*base, "train.steps=3", "resume=true"]))
    assert resumed.try_resume() and resumed.step == 2
    for k, v in reward["net"].items():
        assert torch.equal(resumed.method.reward_net.state_dict()[k], v)
    restored = resumed.method.replay.state_dict()
    assert [row[:3] for row in restored] == [row[:3] for row in replay]  # prompt, completion, label
    assert all(torch.equal(a[3], b[3]) if b[3] is not None else a[3] is None for a, b in zip(restored, replay))
    assert len(resumed.method.reward_trainer.replay) == len(reward["replay"])


def test_reward_net_starts_from_the_policy_or_from_scratch():
    base = [*SHARED, "train.method=expert_iteration"]
    exp = Experiment(load_config(overrides=base))
    policy, net = exp.model.state_dict(), exp.method.reward_net
    assert all(torch.equal(v, policy[k]) for k, v in net.trunk.state_dict().items())
    assert not net.head.weight.detach().any()  # no opinion until trained
    exp = Experiment(load_config(overrides=[*base, "reward.init=scratch"]))
    assert not torch.equal(exp.method.reward_net.trunk.state_dict()["wte.weight"], exp.model.state_dict()["wte.weight"])


@pytest.mark.parametrize("method", SELF_IMPROVEMENT)
def test_collect_changes_no_weights_and_learn_consumes_its_experience(method, tmp_path):
    # the contract trace workers rely on: collect only reads the weights
    exp = Experiment(load_config(None, [*small(method), f"logdir={tmp_path}"]))
    net = exp.method.reward_net
    problems = exp.next_problems()
    before = {k: v.clone() for k, v in [*exp.model.state_dict().items(), *net.state_dict().items()]}
    batch = exp.collect(problems).experience
    after = [*exp.model.state_dict().items(), *net.state_dict().items()]
    assert all(torch.equal(before[k], v) for k, v in after)
    per_problem = 1 if method == "alphazero" else exp.cfg.improve.samples
    assert batch.size == len(problems) * per_problem and len(batch.heldout_probs) == batch.heldout.sum()
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.scores = batch.labels  # complete when collect returns it
    out = exp.method.learn(batch)  # the reward net always learns from the labelled traces
    assert out.flops[tags.REWARD] > 0
    assert not all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("method,vote", [("alphazero", False), ("policy_gradient", False), ("expert_iteration", True)])
def test_reward_rollouts_are_sampled_for_the_reward_net_alone(method, vote, tmp_path, monkeypatch):
    # reward.rollouts=3: three sampled traces per problem, labelled as the method labels its
    # own, join the reward net's replay (not the policy's), their generation in the ledger
    import emergent.platform.experiment as experiment

    if vote:  # a voting method never calls the verifier, for these traces either
        monkeypatch.setattr(experiment, "Oracle", RaisingOracle)
    extra = ["improve.label_source=majority_vote"] if vote else []
    extra += ["search.tree_traces=0"] if method == "alphazero" else []  # the tree's own: their test below
    base = [*small(method), *extra, f"logdir={tmp_path}"]
    plain, more = (Experiment(load_config(None, [*base, f"run_name={r}", f"reward.rollouts={r}"])) for r in (0, 3))
    problems = plain.next_problems()
    a, b = plain.collect(problems).experience, more.collect(problems).experience
    assert a.reward_traces == () and len(b.reward_traces) == 3 * len(problems)
    assert {t.prompt for t in b.reward_traces} == set(b.prompts) and {t.label for t in b.reward_traces} <= {0.0, 1.0}
    assert b.flops[tags.GENERATE] > a.flops.get(tags.GENERATE, 0.0)
    if not vote:
        truth = Oracle(more.task, problems)(np.arange(len(problems)).repeat(3), [t.completion for t in b.reward_traces])
        assert (np.array([t.label for t in b.reward_traces]) <= truth).all()  # the verifier's; 0 when unfinished
    policy_replay = len(more.method.replay) if more.method.replay is not None else 0
    more.method.learn(b)
    assert len(more.method.reward_trainer.replay) == int((~b.heldout).sum()) + 3 * len(problems)
    assert (len(more.method.replay) if more.method.replay is not None else 0) - policy_replay <= b.size


def test_near_misses_change_one_digit_each():
    from emergent.agents.reward_trainer import near_misses

    comps = ["12+3=15>12+3", "no digits", "", "7"]
    src, copies = near_misses(comps, 3, np.random.default_rng(0))
    assert src.tolist() == [0, 0, 0, 3, 3, 3]
    for i, c in zip(src, copies):
        diff = [j for j, (x, y) in enumerate(zip(comps[i], c)) if x != y]
        assert len(c) == len(comps[i]) and len(diff) == 1 and comps[i][diff[0]].isdigit() and c[diff[0]].isdigit()


@pytest.mark.parametrize("method", ["expert_iteration", "policy_gradient"])  # (one make_experience for all)
def test_reward_near_misses_copy_the_trained_traces_and_the_verifier_labels_them(method, tmp_path):
    # reward.near_misses=2: two one-digit copies of each trace the reward net trains on (none
    # of a held-out one), labelled by the verifier, for the reward net's replay alone
    base = [*small(method), f"logdir={tmp_path}", "reward.heldout_fraction=0.5"]
    exp = Experiment(load_config(None, [*base, "reward.near_misses=2"]))
    problems = exp.next_problems()
    b = exp.collect(problems).experience
    assert 0 < int((~b.heldout).sum()) < b.size
    trained = np.array([i for i in np.flatnonzero(~b.heldout) if any(ch.isdigit() for ch in b.completions[i])])
    assert len(trained) and len(b.reward_traces) == 2 * len(trained)  # a completion without digits has no copies
    rows = b.rows[trained].repeat(2)
    assert [t.prompt for t in b.reward_traces] == [b.prompts[r] for r in rows]
    truth = Oracle(exp.task, problems)(rows, [t.completion for t in b.reward_traces]).astype(bool) & b.finished[
        trained
    ].repeat(2)
    assert np.array_equal([t.label for t in b.reward_traces], truth.astype(float))
    for t, i in zip(b.reward_traces, trained.repeat(2)):
        assert sum(x != y for x, y in zip(t.completion, b.completions[i])) == 1
    exp.method.learn(b)
    assert len(exp.method.reward_trainer.replay) == int((~b.heldout).sum()) + 2 * len(trained)


def test_step_drills_join_the_reward_replay_labelled_by_the_step_checker(tmp_path):
    # reward.step_drills=3 on countdown with step labels: three drills per problem, labelled
    # by the task's step checker, for the reward net's step head alone (no value target)
    base = [
        *small("expert_iteration"),
        "task.name=countdown",
        "task.format=scratchpad",
        "task.difficulty=[3,4]",
        "task.extrapolate=[5,5]",
        "task.check_steps=true",
        "model.max_len=64",
        f"logdir={tmp_path}",
    ]
    exp = Experiment(load_config(None, [*base, "reward.step_drills=3"]))
    problems = exp.next_problems()
    b = exp.collect(problems).experience
    drills = [t for t in b.reward_traces if not t.value]
    assert len(drills) == 3 * len(problems) == len(b.reward_traces)
    assert [t.prompt for t in drills] == [p.prompt for p in problems for _ in range(3)]
    truth = exp.task.step_labels([p for p in problems for _ in range(3)], [t.completion for t in drills])
    assert [t.steps for t in drills] == [tuple(y.tolist()) for y in truth]
    assert all(t.completion.endswith(">") for t in drills)
    exp.method.learn(b)
    assert sum(not t.value for t in exp.method.reward_trainer.replay.items) == len(drills)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["reward.step_labels=false"], "reward.step_drills train the reward net's step head"),
        (["task.name=multiplication", "task.difficulty=[2,3]", "task.extrapolate=[4,4]"], "writes no step drills"),
    ],
)
def test_step_drills_need_a_step_head_and_a_task_that_writes_them(extra, message):
    from emergent.platform.config import ConfigError

    base = [*small("expert_iteration"), "task.name=countdown", "task.format=scratchpad", "task.difficulty=[3,4]"]
    base += ["task.extrapolate=[5,5]", "task.check_steps=true", "reward.step_drills=1"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*base, *extra])


def test_near_misses_need_the_verifier():
    from emergent.platform.config import ConfigError

    with pytest.raises(ConfigError, match="near_misses"):
        load_config(None, [*small("expert_iteration"), "improve.label_source=majority_vote", "reward.near_misses=1"])


@pytest.mark.parametrize("confident,target", [(1.0, "visits"), (1.0, "completed_q"), (0.0, "visits")])
def test_alphazero_trains_the_policy_only_where_the_search_ran(confident, target, tmp_path):
    # learn_from=all (AlphaZero as first built): confident_prior 1.0 searches every move, and
    # each move has an improved policy to learn. 0.0 searches none: no targets, so the policy
    # takes no step (not even weight decay).
    exp = Experiment(
        load_config(
            None,
            [
                *small("alphazero"),
                f"search.confident_prior={confident}",
                f"search.policy_target={target}",
                "improve.learn_from=all",
                f"logdir={tmp_path}",
            ],
        )
    )
    batch = exp.collect(exp.next_problems()).experience
    mass = torch.cat([v.sum(-1) for v in batch.payload.targets])  # [all moves]
    assert batch.scalars[tags.SEARCH_SEARCHED_FRACTION] == confident
    assert torch.allclose(mass, torch.full_like(mass, confident), atol=1e-5)
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    out = exp.method.learn(batch)
    moved = not all(torch.equal(before[k], v) for k, v in exp.model.state_dict().items())
    assert moved == (confident == 1.0) and (out.flops[tags.TRAIN] > 0) == moved


def test_alphazero_learn_from_solved_learns_the_accepted_searched_traces_by_maximum_likelihood(tmp_path):
    # a verifier that accepts every other trace: the replay holds exactly the accepted
    # (finished) ones, without search targets, and one update is the NLL of a draw of them
    from emergent.agents.supervised import completion_nll
    from emergent.agents.token_batch import encode_batch
    from emergent.envs import TOKENIZER

    exp = Experiment(
        load_config(
            None,
            [
                *small("alphazero"),
                "improve.learn_from=solved",
                "improve.updates_per_iter=1",
                "reward.updates_per_iter=0",
                f"logdir={tmp_path}",
            ],
        )
    )
    with torch.no_grad():
        exp.model.wte.weight[TOKENIZER.eos_id] *= 8  # an untrained policy: make traces end
    problems = exp.next_problems()
    batch = exp.method.collect(Prompts([p.prompt for p in problems], lambda rows, comps: np.asarray(rows) % 2 == 0))
    accepted = batch.accepted
    assert accepted.any() and not accepted.all()
    exp.method.remember(batch)
    kept = exp.method.replay.items
    assert {(t.prompt, t.completion) for t in kept} == {
        (batch.prompt_of[i], batch.completions[i]) for i in np.flatnonzero(accepted)
    }
    assert all(t.target is None for t in kept)
    rng_state = exp.method.learn_rng.bit_generator.state  # the draw improve will make
    draw = exp.method.replay.sample(exp.method.learn_rng, exp.cfg.improve.train_batch)
    exp.method.learn_rng.bit_generator.state = rng_state
    enc = encode_batch(TOKENIZER, [t.prompt for t in draw], [t.completion for t in draw], exp.model.cfg.max_len)
    with torch.no_grad():
        expected = float(completion_nll(exp.model, enc.to(exp.device)))
    updates, _ = exp.method.improve(batch)
    assert len(updates) == 1 and abs(float(updates[0].loss) - expected) < 1e-5


def test_policy_gradient_takes_updates_per_iter_steps_on_its_schedule(tmp_path):
    """``improve.updates_per_iter`` clipped steps per iteration, and the schedule is
    stretched over exactly the steps taken: the run ends where the schedule does."""
    steps, k = 3, 4
    exp = Experiment(
        load_config(
            None,
            [
                *small("policy_gradient"),
                f"train.steps={steps}",
                f"improve.updates_per_iter={k}",
                "optim.warmup_steps=0",
                f"logdir={tmp_path}",
            ],
        )
    )
    lrs = []
    opt = exp.method.trainer
    apply = opt.apply

    def spy(loss):
        out = apply(loss)
        lrs.append(out["lr"])
        return out

    opt.apply = spy
    for _ in range(steps):
        exp.train_step()
    assert len(lrs) == steps * k == opt.step_count == opt.total_steps
    from emergent.agents.trainer import lr_at

    assert lrs == [lr_at(i, steps * k, exp.cfg.optim) for i in range(steps * k)]
    assert lrs[-1] < lrs[0]  # the cosine ran its course over the steps taken, not a stretched one


def test_one_policy_gradient_update_is_reinforce_with_the_group_baseline(tmp_path):
    """With one update the clipped ratio is exactly 1: the gradient is REINFORCE's."""
    exp = Experiment(load_config(None, [*small("policy_gradient"), f"logdir={tmp_path}"]))
    batch = exp.collect(exp.next_problems()).experience
    # an untrained policy earns nothing: vary the rewards
    batch = dataclasses.replace(batch, scores=np.random.default_rng(0).random(batch.size))
    grads = {}

    def capture(loss):
        exp.model.zero_grad()
        loss.backward()
        grads.update({n: p.grad.clone() for n, p in exp.model.named_parameters()})
        return {"lr": 0.0, "grad_norm": torch.zeros(())}

    exp.method.trainer.apply = capture
    exp.method.learn(batch)
    # by hand: -(A * log p(completion tokens)) / tokens, A = group-normalised verifier reward
    from emergent.agents.token_batch import encode_batch
    from emergent.envs import TOKENIZER

    S = exp.cfg.improve.samples
    reward = np.where(batch.finished, batch.scores, 0.0).reshape(-1, S)
    A = torch.as_tensor(
        ((reward - reward.mean(1, keepdims=True)) / (reward.std(1, keepdims=True) + 1e-4)).reshape(-1),
        dtype=torch.float32,
    )
    b = encode_batch(TOKENIZER, batch.prompt_of, batch.completions, exp.model.cfg.max_len)
    cut = torch.as_tensor(~batch.finished)
    last = b.loss_mask.cumsum(1).argmax(1)
    b.loss_mask[torch.arange(len(last))[cut], last[cut]] = 0
    logp = torch.log_softmax(exp.model(b.inputs).float(), -1).gather(2, b.targets[..., None]).squeeze(-1)
    exp.model.zero_grad()
    (-(A[:, None] * logp * b.loss_mask).sum() / b.loss_mask.sum()).backward()
    assert A.abs().sum() > 0  # the check below is not vacuous
    for n, p in exp.model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-7)


def test_alphazero_expert_targets_sit_at_informative_moves_only_and_its_loss_is_nll_plus_restricted_kl(tmp_path):
    from emergent.agents.alphazero import expert_loss
    from emergent.agents.token_batch import encode_batch
    from emergent.envs import TOKENIZER

    exp = Experiment(
        load_config(
            None,
            [
                *small("alphazero"),
                "search.num_simulations=8",
                "search.leaves_per_call=1",
                "search.root=gumbel",
                "search.dirichlet_fraction=0",
                "search.leaf_value=rollout",
                f"logdir={tmp_path}",
            ],
        )
    )
    batch = exp.collect(exp.next_problems()).experience
    # rollouts judge every leaf: every searched move has a verdict below it, and a target
    assert batch.scalars[tags.SEARCH_INFORMATIVE_FRACTION] == 1.0
    assert all(torch.allclose(t.sum(-1), torch.ones(len(t)), atol=1e-5) for t in batch.payload.targets)
    # the loss by hand on two rows: one accepted (NLL of its tokens), both with a target at move 1
    prompts, comps = [batch.prompts[0], batch.prompts[1]], ["12", "3"]
    enc = encode_batch(TOKENIZER, prompts, comps, exp.model.cfg.max_len)
    B, T = enc.inputs.shape
    target = torch.zeros(B, T, exp.model.vocab_size)
    a, b = TOKENIZER.encode("4")[0], TOKENIZER.encode("5")[0]
    for row, p in enumerate(prompts):
        target[row, len(p) + 1, [a, b]] = torch.tensor([0.75, 0.25])  # the position predicting move 1
    accepted = torch.tensor([1.0, 0.0])
    with torch.no_grad():
        got = float(expert_loss(exp.model, enc, accepted, target))
        logp = torch.log_softmax(exp.model(enc.inputs).double(), -1)
        nll = -(logp[0].gather(1, enc.targets[0, :, None]).squeeze(1) * enc.loss_mask[0]).sum() / enc.loss_mask[0].sum()
        kl = 0.0
        for row, p in enumerate(prompts):
            pair = logp[row, len(p) + 1, [a, b]]
            q = torch.softmax(pair, 0)  # the policy restricted to the target's support
            kl += float(
                (
                    torch.tensor([0.75, 0.25], dtype=torch.float64)
                    * (torch.log(torch.tensor([0.75, 0.25], dtype=torch.float64)) - q.log())
                ).sum()
            )
    assert got == pytest.approx(float(nll) + kl / 2, rel=1e-5)
    # where the target is the restricted policy itself, the KL term is 0 and so is its gradient
    with torch.no_grad():
        own = torch.softmax(exp.model(enc.inputs)[:, :, [a, b]], -1)
    same = torch.zeros_like(target)
    for row, p in enumerate(prompts):
        same[row, len(p) + 1, [a, b]] = own[row, len(p) + 1]
    exp.model.zero_grad()
    expert_loss(exp.model, enc, torch.zeros(2), same).backward()
    assert max(float(p.grad.abs().max()) for p in exp.model.parameters() if p.grad is not None) < 1e-6


def test_alphazero_with_nothing_informative_and_nothing_solved_takes_no_step(tmp_path):
    # net-valued leaves and a verifier that accepts nothing: one simulation reaches no
    # terminal state, so no move is informative and no trace accepted: nothing to learn
    exp = Experiment(
        load_config(
            None,
            [
                *small("alphazero"),
                "search.num_simulations=1",
                "search.leaves_per_call=1",
                "search.terminal_value=learned",
                f"logdir={tmp_path}",
            ],
        )
    )
    problems = exp.next_problems()
    batch = exp.method.collect(Prompts([p.prompt for p in problems], lambda rows, comps: np.zeros(len(rows))))
    assert batch.scalars[tags.SEARCH_INFORMATIVE_FRACTION] == 0.0 and not batch.accepted.any()
    assert not any(bool(t.any()) for t in batch.payload.targets)
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    exp.method.remember(batch)
    assert len(exp.method.replay) == 0
    updates, _ = exp.method.improve(batch)
    assert updates == [] and all(torch.equal(before[k], v) for k, v in exp.model.state_dict().items())


def test_alphazero_sample_first_searches_only_the_problems_sampling_failed(tmp_path):
    exp = Experiment(load_config(None, [*small("alphazero"), "improve.sample_first=2", f"logdir={tmp_path}"]))
    problems = exp.next_problems()
    P = len(problems)
    # a verifier that accepts every completion of even problems: sampling solves those
    batch = exp.method.collect(
        Prompts([p.prompt for p in problems], lambda rows, comps: (np.asarray(rows) % 2 == 0).astype(float))
    )
    sampled, searched = batch.rows[: 2 * P], batch.rows[2 * P :]
    assert sampled.tolist() == np.repeat(np.arange(P), 2).tolist()
    solved = set(sampled[batch.labels[: 2 * P] > 0].tolist())
    assert set(searched.tolist()) == set(range(P)) - solved  # the search took only the failures
    assert all(len(t) == 0 for t in batch.payload.targets[: 2 * P])  # sampled traces carry no improved policy
    assert batch.flops[tags.GENERATE] > 0 and batch.flops[tags.SEARCH] > 0


def test_alphazero_tree_traces_are_judged_states_labelled_by_the_verifier(tmp_path):
    exp = Experiment(
        load_config(
            None, [*small("alphazero"), "search.tree_traces=5", "search.leaf_value=rollout", f"logdir={tmp_path}"]
        )
    )
    problems = exp.next_problems()
    batch = exp.collect(problems).experience
    tree = batch.reward_traces
    assert 0 < len(tree) <= 5 and len({(t.prompt, t.completion) for t in tree}) == len(tree)
    rows = np.array([batch.prompts.index(t.prompt) for t in tree])
    truth = Oracle(exp.task, problems)(rows, [t.completion for t in tree])
    labels = np.array([t.label for t in tree])
    assert (labels <= truth).all() and set(labels) <= {0.0, 1.0}  # the verifier's; 0 when unfinished
