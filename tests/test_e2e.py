"""End-to-end runs through the real entry point with a tiny budget (cleanrl style)."""

import signal
import subprocess
import sys

import pytest
from conftest import ROOT, SEARCH, SHARED, SMALL, TINY, cli_env, run_cli, scalars, wait_until

from emergent import tags
from emergent.platform.checkpoint import load_checkpoint
from emergent.platform.cli import main
from emergent.platform.config import load_config
from emergent.platform.faults import HELD, HOLD_ENV
from emergent.platform.local import train_local


def test_tiny_run_writes_everything_tensorboard_needs(tmp_path):
    proc = run_cli("train", *TINY, "train.steps=20", f"logdir={tmp_path}", "experiment=e2e")
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "e2e" / "supervised_L1_d32_learned_s0"
    assert "finished" in proc.stdout and (run_dir / "last.pt").is_file()
    logged = scalars(run_dir)
    required = {
        tags.TRAIN_LOSS,
        tags.TRAIN_LR,
        tags.PERF_TOKENS_PER_S,
        tags.COMPUTE_TRAIN_FLOPS,
        tags.COMPUTE_TOTAL_FLOPS,
    }
    required |= {tags.eval_tag(s, m) for s in ("train", "test", "extrapolate") for m in tags.EVAL_METRICS}
    required |= {tags.eval_tag("test", "exact_match", 1), tags.eval_tag("extrapolate", "exact_match", 3)}
    assert required <= set(logged)
    # eval at the start, every eval.every steps and at the end
    assert [s for s, _ in logged[tags.eval_tag("test", "exact_match")]] == [0, 10, 20]
    flops = logged[tags.COMPUTE_TRAIN_FLOPS]
    assert [s for s, _ in flops] == [5, 10, 15, 20] and all(b > a for (_, a), (_, b) in zip(flops, flops[1:]))
    # the ledger is cumulative: its last value is steps x per-step FLOPs summed, never reset
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert flops[-1][1] == pytest.approx(ckpt["ledger"]["train"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})  # text and hparams: not scalars
    acc.Reload()
    texts = set(acc.Tags()["tensors"])
    assert {"config/text_summary", "samples/test/text_summary"} <= texts
    from tensorboard.plugins.hparams import plugin_data_pb2

    hp = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hp)
    start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.d_model"].number_value == 32
    assert start.hparams["train.method"].string_value == "supervised"


def test_same_seed_same_metrics_different_seed_different(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = load_config(None, [*TINY, "train.steps=15", f"seed={seed}", f"logdir={tmp_path}", f"run_name={name}"])
        train_local(cfg)
        runs[name] = scalars(cfg.run_dir, perf=False)
    assert runs["a"] == runs["b"]
    assert runs["a"][tags.TRAIN_LOSS] != runs["c"][tags.TRAIN_LOSS]


def test_sigkill_then_resume_finishes_the_same_run(tmp_path):
    steps = 40
    args = [*TINY, f"train.steps={steps}", "checkpoint_every=10", "eval.every=20", f"logdir={tmp_path}"]
    # the uninterrupted reference runs meanwhile, in a process of its own
    whole = subprocess.Popen(
        [sys.executable, "-m", "emergent", "train", *args, "run_name=whole"],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the killed run holds after its step-20 checkpoint (EMERGENT_HOLD): killed there, not when a clock says
    proc = subprocess.Popen(
        [sys.executable, "-m", "emergent", "train", *args, "run_name=killed"],
        cwd=ROOT,
        env={**cli_env(), HOLD_ENV: "killed:20"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = tmp_path / "quickstart" / "killed" / "last.pt"
    seen = []

    def held() -> bool:  # meanwhile, every read of a checkpoint the live process is rewriting is complete
        if ckpt.exists():
            seen.append(int(load_checkpoint(ckpt)["step"]))
        return (ckpt.parent / HELD).exists()

    try:
        wait_until(held, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert int(load_checkpoint(ckpt)["step"]) == 20 and seen == sorted(seen) and set(seen) <= {10, 20}

    resumed = run_cli("train", *args, "run_name=killed", "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert int(load_checkpoint(ckpt)["step"]) == steps
    assert not list(ckpt.parent.glob("*.tmp"))

    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    a = scalars(ckpt.parent)
    b = scalars(tmp_path / "quickstart" / "whole")
    # the resumed run is the same run: identical losses and evals, and no step logged twice
    for tag in (tags.TRAIN_LOSS, tags.eval_tag("test", "exact_match"), tags.COMPUTE_TRAIN_FLOPS):
        assert a[tag] == b[tag], tag


@pytest.mark.parametrize("method", ["alphazero"])
def test_a_self_improvement_run_killed_and_resumed_is_the_run_that_was_never_killed(tmp_path, method):
    # its replay, reward net, both optimisers, every RNG stream (search's root noise and
    # sampled moves included) and the problem stream come back from the checkpoint: every
    # scalar it logs is the uninterrupted run's, each once
    own = [*SEARCH, "improve.problems_per_iter=6"] if method == "alphazero" else ["improve.samples=3"]
    shared = [a for a in SMALL if not a.startswith(("improve.samples", "improve.problems_per_iter"))]
    args = [
        *shared,
        *own,
        f"train.method={method}",
        "train.steps=8",
        "eval.every=4",
        "checkpoint_every=2",
        f"logdir={tmp_path}",
    ]
    whole = subprocess.Popen(
        [sys.executable, "-m", "emergent", "train", *args, "run_name=whole"],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "emergent", "train", *args, "run_name=killed"],
        cwd=ROOT,
        env={**cli_env(), HOLD_ENV: "killed:4"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_dir = tmp_path / "quickstart" / "killed"
    try:
        wait_until((run_dir / HELD).exists, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert int(load_checkpoint(run_dir / "last.pt")["step"]) == 4
    resumed = run_cli("train", *args, "run_name=killed", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-3000:]
    a, b = scalars(run_dir, perf=False), scalars(tmp_path / "quickstart" / "whole", perf=False)
    assert set(a) == set(b) and len(a) > 20
    for tag in b:
        assert a[tag] == b[tag], tag


def test_resume_refuses_a_different_config(tmp_path, capsys):
    base = [*TINY, "train.steps=4", f"logdir={tmp_path}", "run_name=r"]
    assert main(["train", *base]) == 0
    assert main(["train", *base, "resume=true", "train.steps=6"]) == 0  # extending a run is allowed
    capsys.readouterr()
    assert main(["train", *base, "resume=true", "optim.lr=0.5"]) == 2
    assert "optim.lr" in capsys.readouterr().err


def test_resume_without_checkpoint_starts_fresh(tmp_path, capsys):
    assert main(["train", *TINY, "train.steps=2", f"logdir={tmp_path}", "resume=true"]) == 0
    assert "starting fresh" in capsys.readouterr().out


@pytest.mark.parametrize("resume", [False, True])
def test_a_fresh_start_where_an_attempt_died_before_its_first_checkpoint_logs_each_step_once(tmp_path, resume):
    # the attempt's events are on disk, its checkpoint is not (a sweep retries such a run
    # without resume=true, a Ray run whose learner was lost with resume=true)
    base = [*TINY, "train.steps=4", "eval.every=2", "train.log_every=1", f"logdir={tmp_path}"]
    train_local(load_config(None, [*base, "run_name=died", "train.steps=3"]))
    died = tmp_path / "quickstart" / "died"
    (died / "last.pt").unlink()
    for f in died.rglob("events.out.tfevents.*"):  # written a minute earlier, as a real attempt's were
        parts = f.name.split(".")  # events.out.tfevents.<unix seconds>.<host>.<pid>.<n>: readers sort by name
        f.rename(f.with_name(".".join([*parts[:3], f"{int(parts[3]) - 60:010d}", *parts[4:]])))
    train_local(load_config(None, [*base, "run_name=died", f"resume={str(resume).lower()}"]))
    train_local(load_config(None, [*base, "run_name=once"]))
    got, want = scalars(died, perf=False), scalars(tmp_path / "quickstart" / "once", perf=False)
    assert [s for s, _ in got[tags.COMPUTE_TOTAL_FLOPS]] == [1, 2, 3, 4]
    assert got == want
    flops = tags.VS_FLOPS_DIR
    assert scalars(died / flops, perf=False) == scalars(tmp_path / "quickstart" / "once" / flops, perf=False)


def test_a_time_limit_ends_the_run_with_an_eval_and_a_checkpoint(tmp_path):
    # the step that passes train.time_limit_s is the run's last: logged, evaluated and
    # checkpointed like a final step; a resumed run carries the wall clock it had used
    base = [*TINY, "train.steps=1000000", "eval.every=1000000", f"logdir={tmp_path}", "run_name=t"]
    train_local(load_config(None, [*base, "train.time_limit_s=1"]))
    run_dir = tmp_path / "quickstart" / "t"
    first = load_checkpoint(run_dir / "last.pt")
    step = int(first["step"])
    assert 0 < step < 1000000 and first["elapsed_s"] >= 1
    logged = scalars(run_dir)
    assert [s for s, _ in logged[tags.eval_tag("test", "exact_match")]] == [0, step]
    assert logged[tags.TRAIN_LOSS][-1][0] == step
    assert logged[tags.PERF_ELAPSED_S][-1][1] >= 1

    # a second more than the first part used: a tiny step takes milliseconds
    limit = float(first["elapsed_s"]) + 1
    train_local(load_config(None, [*base, f"train.time_limit_s={limit}", "resume=true"]))
    second = load_checkpoint(run_dir / "last.pt")
    assert int(second["step"]) > step and second["elapsed_s"] >= limit
    evals = [s for s, _ in scalars(run_dir)[tags.eval_tag("test", "exact_match")]]
    assert evals == [0, step, int(second["step"])]


def test_a_curriculum_starts_at_the_lowest_difficulty_and_rises(tmp_path):
    # supervised reads teacher-forced exact match; expert iteration, started from that run,
    # the verifier's verdicts on its own samples. Both open difficulty 2 only once 1 is learnt.
    base = [
        *SHARED,
        "train.curriculum_window=16",
        "train.log_every=1",
        "optim.lr=3e-3",
        "optim.min_lr=3e-3",
        f"logdir={tmp_path}",
    ]
    sup = [*base, "train.batch_size=16", "train.steps=80", "train.curriculum=0.1", "run_name=sup"]
    ei = [
        *base,
        "train.method=expert_iteration",
        "train.steps=40",
        "train.curriculum=0.1",
        "improve.problems_per_iter=16",
        "improve.samples=2",
        "reward.init=scratch",
        "reward.n_layer=1",
        "reward.d_model=32",
        "reward.n_head=2",
        "run_name=ei",
        f"improve.init_from={tmp_path / 'quickstart' / 'sup' / 'last.pt'}",
    ]
    for overrides in (sup, ei):
        cfg = load_config(None, overrides)  # after the supervised run: ei starts from its checkpoint
        train_local(cfg)
        values = [v for _, v in scalars(cfg.run_dir)[tags.TRAIN_CURRICULUM]]
        assert values[0] == 1 and values[-1] == 2 and values == sorted(values), cfg.run_name
