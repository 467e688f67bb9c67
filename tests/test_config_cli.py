"""Bad input exits 2 with one line naming the problem, before any training starts."""

import pytest
from conftest import run_cli

from emergent.platform.cli import main
from emergent.platform.config import ConfigError, load_config, to_yaml

BAD_TRAIN = [
    (["model.d_modle=64"], ["unknown config key 'model.d_modle'", "d_model"]),
    (["model.d_model=wide"], ["model.d_model", "wide"]),
    (["task.name=chess"], ["task.name='chess'", "addition", "countdown"]),
    (["train.method=ppo"], ["train.method='ppo'", "supervised"]),
    (["model.pos=alibi"], ["model.pos", "rope"]),
    (["model.pos=abacus", "task.name=countdown"], ["model.pos=abacus", "task.format=reversed", "not countdown"]),
    (["model.pos=coupled", "task.format=plain"], ["model.pos=coupled", "not addition (plain)"]),
    (["model.place_offset=4"], ["model.place_offset=4", "not model.pos=learned"]),
    (["runtime=slurm"], ["runtime='slurm'", "local"]),
    (["task.format=binary"], ["binary", "reversed"]),
    (["task.check_steps=true"], ["task.check_steps", "no step checker", "'reversed'"]),  # addition's default
    (["task.difficulty=[3,1]"], ["task.difficulty"]),
    (["task.extrapolate=[2,3]"], ["above the training range"]),
    (["model.max_len=8"], ["model.max_len=8 is too short"]),
    (["configs/quickstart.yaml", "seed"], ["'seed' is not of the form key=value"]),
    (["configs/does-not-exist.yaml"], ["config file not found"]),
    (["device=tpu"], ["device='tpu'"]),
    (["train.method=expert_iteration", "improve.init_from=nowhere.pt"], ["improve.init_from", "nowhere.pt"]),
    (["train.method=expert_iteration", "improve.label_source=oracle"], ["improve.label_source='oracle'"]),
    (["eval.splits=[train,validation]"], ["eval.splits='validation'"]),
    (["train.method=expert_iteration", "reward.d_model=64"], ["reward.init=policy needs the policy's size"]),
    (["train.method=expert_iteration", "reward.init=copy"], ["reward.init='copy'"]),
    (["train.time_limit_s=0"], ["train.time_limit_s must be > 0"]),
    (["train.curriculum=1.5"], ["train.curriculum must lie in (0, 1]"]),
    (["train.curriculum_window=0"], ["train.curriculum_window must be >= 1"]),
    (["train.method=alphazero", "search.policy_target=counts"], ["search.policy_target='counts'", "completed_q"]),
    # a key only other methods read would be silently ignored: refused, naming who reads it
    (
        ["train.method=expert_iteration", "train.batch_size=16"],
        ["train.batch_size=16 is not read by train.method=expert_iteration", "['supervised', 'self_label']"],
    ),
    (["train.method=alphazero", "train.target=answer"], ["train.target='answer'", "['supervised', 'self_label']"]),
    (["train.method=self_label", "self_label.filter=majority"], ["self_label.filter='majority'", "vote"]),
    (["train.method=self_label", "self_label.share=1.5"], ["self_label.share must lie in [0, 1]"]),
    (["self_label.noise=0.1"], ["self_label.noise=0.1 is not read by train.method=supervised", "['self_label']"]),
    (["improve.samples=4"], ["improve.samples=4 is not read by train.method=supervised", "policy_gradient"]),
    (["train.method=policy_gradient", "improve.replay_size=10"], ["improve.replay_size=10", "alphazero"]),
    (["train.method=expert_iteration", "search.num_simulations=8"], ["search.num_simulations=8", "['alphazero']"]),
    (["train.method=expert_iteration", "improve.clip_ratio=0.1"], ["improve.clip_ratio=0.1", "['policy_gradient']"]),
    (["reward.lr=0.1"], ["reward.lr=0.1 is not read by train.method=supervised"]),
    (["train.method=expert_iteration", "reward.step_labels=true"], ["reward.step_labels=true needs a step checker"]),
    (
        [
            "train.method=expert_iteration",
            "task.name=countdown",
            "task.format=scratchpad",
            "task.difficulty=[3,4]",
            "task.extrapolate=[5,5]",
            "reward.step_labels=true",
            "improve.label_source=majority_vote",
        ],
        ["reward.step_labels come from the step checker", "majority_vote"],
    ),
    (["train.method=expert_iteration", "reward.step_coef=-1"], ["reward.step_coef must be >= 0"]),
]


@pytest.mark.parametrize("args,needles", BAD_TRAIN)
def test_bad_train_input_exits_2_with_one_line(args, needles, capsys, tmp_path):
    code = main(["train", *args, f"logdir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("emergent: error:")
    for n in needles:
        assert n in err
    assert not any(tmp_path.iterdir())  # failed before any work: nothing written


BAD_CHECKPOINTS = ["missing", "garbage", "truncated", "foreign", "pickle_bomb"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint from a 4-step run."""
    from conftest import TINY

    logdir = tmp_path_factory.mktemp("ckpt")  # long enough to answer some problems (0.17 test exact match)
    assert (
        main(["train", *TINY, "train.steps=60", "optim.lr=3e-3", "eval.every=1000", f"logdir={logdir}", "run_name=r"])
        == 0
    )
    return logdir / "quickstart" / "r" / "last.pt"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_bad_checkpoint_exits_2_with_one_line(kind, checkpoint, tmp_path, capsys):
    import pickle

    import torch

    path = tmp_path / "bad.pt"
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "truncated":
        path.write_bytes(checkpoint.read_bytes()[:1000])
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "pickle_bomb":

        class Evil:
            def __reduce__(self):
                return (print, ("pwned",))

        path.write_bytes(pickle.dumps(Evil()))
    code = main(["eval", str(path)])
    out = capsys.readouterr()
    assert code == 2 and "pwned" not in out.out
    err = out.err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err


def test_checkpoint_of_another_model_size(checkpoint, capsys):
    code = main(["eval", str(checkpoint), "model.d_model=64"])
    err = capsys.readouterr().err
    assert code == 2 and "does not match the model config" in err


def test_eval_prints_every_split_and_difficulty(checkpoint, capsys):
    assert main(["eval", str(checkpoint), "eval.problems=12"]) == 0
    out = capsys.readouterr().out
    for split in ("train", "test", "extrapolate"):
        assert split in out
    rows = [line.split() for line in out.splitlines()[2:]]
    assert {(r[0], r[1]) for r in rows} >= {("test", "all"), ("test", "1"), ("test", "2"), ("extrapolate", "3")}


def test_real_process_exit_code_is_2():
    proc = run_cli("train", "task.name=chess", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "emergent: error: task.name='chess' is not valid; "
        "choose one of ['addition', 'countdown', 'multiplication', 'sorting']"
    ]


def test_yaml_and_overrides_compose(tmp_path):
    # the issue's own example: switching the task keeps the rest of the quickstart
    cfg = load_config("configs/quickstart.yaml", ["model.d_model=64", "task.name=sorting", "seed=3"])
    assert cfg.task.format == "plain"
    assert (cfg.model.d_model, cfg.task.name, cfg.seed, cfg.model.n_layer) == (64, "sorting", 3, 2)
    assert cfg.run_dir.name == "supervised_L2_d64_learned_s3"
    again = load_config(base=to_yaml(cfg))
    assert again == cfg


def test_ray_staleness_defaults_to_one_batch_in_flight_per_worker():
    # at most max_staleness + 1 batches are in flight: the default keeps every worker writing
    assert load_config(None, ["ray.workers=4"]).ray.max_staleness == 3
    assert load_config(None, ["ray.workers=4", "ray.max_staleness=1"]).ray.max_staleness == 1
    assert load_config(None, []).ray.max_staleness == 1  # two workers, as before
    with pytest.raises(ConfigError, match="ray.max_staleness"):
        load_config(None, ["ray.max_staleness=-1"])


def test_step_labels_follow_check_steps_and_runs_record_what_they_ran():
    countdown = ["train.method=expert_iteration", "task.name=countdown", "task.format=scratchpad"]
    countdown += ["task.difficulty=[3,4]", "task.extrapolate=[5,5]"]
    assert load_config(None, [*countdown, "task.check_steps=true"]).reward.step_labels is True
    assert load_config(None, countdown).reward.step_labels is False
    assert load_config(None, [*countdown, "reward.step_labels=true"]).reward.step_labels is True
    votes = [*countdown, "task.check_steps=true", "improve.label_source=majority_vote"]
    assert load_config(None, votes).reward.step_labels is False  # a vote never calls the checker


def test_search_keys_are_accepted_where_an_evaluation_searches(tmp_path):
    cfg = load_config(None, ["eval.decode=search", "search.num_simulations=8"])  # supervised, evaluated by search
    assert cfg.search.num_simulations == 8


def test_the_builtin_default_is_the_quickstart():
    assert load_config() == load_config("configs/quickstart.yaml")


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted(Path("configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path, ["improve.init_from=null"])  # warm starts point at runs not made here


def _table(capsys) -> dict[tuple[str, str], list[float]]:
    """(split, difficulty) -> [n, exact_match, token_accuracy, edit_distance] from `emergent eval`'s output."""
    lines = capsys.readouterr().out.splitlines()[2:]
    assert lines[-1].startswith("length frontier (exact match >= 0.99 at every length up to it): test ")
    rows = [line.split() for line in lines[:-1]]
    return {(r[0], r[1]): [float(x) for x in r[2:]] for r in rows}


def test_eval_by_search(checkpoint, capsys):
    base = ["eval", str(checkpoint), "eval.problems=12", "eval.splits=[test]"]
    assert main(base) == 0
    greedy = _table(capsys)
    assert greedy[("test", "all")][0] == 12 and greedy[("test", "all")][2] > 0  # not vacuous: it answers some
    # a search that never simulates (every move confident) plays the prior's argmax: greedy decoding
    assert main([*base, "eval.decode=search", "search.confident_prior=0.0", "search.top_k=3"]) == 0
    assert _table(capsys) == greedy
    # with simulations it searches (no reward net in a supervised checkpoint: leaves are valued 0.5)
    # and reports every difficulty of the split
    assert main([*base, "eval.decode=search", "search.num_simulations=8", "search.top_k=3"]) == 0
    searched = _table(capsys)
    assert set(searched) == set(greedy) and searched[("test", "all")][0] == 12
    assert all(0 <= row[1] <= 1 for row in searched.values())


def test_runtime_ray_without_ray_exits_2(tmp_path):
    """Where Ray is absent (its import made to fail in a fresh interpreter), runtime=ray
    exits 2 with one line saying how to install it, and writes nothing."""
    import subprocess
    import sys

    from conftest import ROOT, cli_env

    code = (
        "import sys; sys.modules['ray'] = None  # 'import ray' now raises ImportError\n"
        "from emergent.platform.cli import main\n"
        f"sys.exit(main(['train', 'runtime=ray', 'logdir={tmp_path}']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=cli_env()
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert "runtime=ray needs Ray: pip install" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())
