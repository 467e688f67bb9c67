"""A task written outside emergent, in the user's own package, trained and evaluated through
the real entry point: ``task.module`` names the module that registers it."""

import os
import textwrap

import pytest
from conftest import TINY, cli_env, run_cli, scalars

TASK = textwrap.dedent('''
    """Write a digit string backwards: "314=" -> "413"; difficulty = its length."""
    from emergent.envs import Problem, Task, register_task


    @register_task
    class ReverseDigits(Task):
        name = "reverse_digits"
        max_difficulty = 8

        def make_problem(self, rng, difficulty):
            digits = "".join(map(str, rng.integers(0, 10, size=difficulty)))
            return Problem(prompt=digits + "=", answer=digits[::-1], trace=digits[::-1], difficulty=difficulty)
''')


@pytest.mark.slow
def test_a_task_from_the_users_own_package_trains_and_evaluates_through_the_cli(tmp_path):
    package = tmp_path / "src" / "mytasks"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "reverse.py").write_text(TASK)
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "src"), env["PYTHONPATH"]])
    args = [
        *TINY,
        "task.module=mytasks.reverse",
        "task.name=reverse_digits",
        "task.difficulty=[2,3]",
        "task.extrapolate=[4,4]",
        "train.steps=20",
        f"logdir={tmp_path / 'runs'}",
        "run_name=mine",
    ]
    done = run_cli("train", *args, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "runs" / "quickstart" / "mine"
    logged = scalars(run)
    assert [s for s, _ in logged["eval/test/exact_match"]] == [0, 10, 20] and "eval/test/d3/exact_match" in logged
    # the checkpoint records the module: `emergent eval` imports it again in a new process
    ev = run_cli("eval", str(run / "last.pt"), env=env)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "task reverse_digits" in ev.stdout and "test" in ev.stdout
    # a module that cannot be imported: one line, exit 2, before any work
    bad = run_cli("train", *args[:-1], "task.module=mytasks.nothing", "run_name=bad", env=env)
    err = bad.stderr.strip()
    assert bad.returncode == 2 and len(err.splitlines()) == 1, err
    assert "task.module='mytasks.nothing' cannot be imported: ModuleNotFoundError" in err
    assert not (tmp_path / "runs" / "quickstart" / "bad").exists()
    # 1 digit has 10 prompts, none of them held out for test: a one-line error, exit 2, before any work
    small = run_cli("train", *args[:-1], "task.difficulty=[1,2]", "run_name=small", env=env)
    err = small.stderr.strip()
    assert small.returncode == 2 and len(err.splitlines()) == 1, err
    assert "no test problem of difficulty 1 in 100,000 draws" in err and "start task.difficulty above 1" in err
    assert not (tmp_path / "runs" / "quickstart" / "small" / "last.pt").exists()
