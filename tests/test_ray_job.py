"""The README's cluster recipe, run verbatim by bash from a home with no Ray state: a
head, a second node (a second raylet on this machine), a `runtime=ray` run of two
data-parallel learners and a sweep submitted as jobs.

Each job line gets a tiny budget appended (later overrides win), nothing else
changes; after the train job, the test adds its one-learner twin, whose tags the
two-learner run must log. Its own module, so no in-process Ray (test_ray.py's fixture) runs beside the
cluster.
"""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, scalars

from emergent import tags
from emergent.platform.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time: see conftest

TINY_JOB = [*TINY, "train.steps=4", "eval.splits=[test]", "ray.workers=1"]
TINY_SWEEP = [*TINY, "train.steps=4", "eval.splits=[test]", "checkpoint_every=4"]


def readme_cluster_recipe() -> str:
    """The README's bash block that starts a cluster, submits a job and stops it."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    recipe = [b for b in blocks if "ray start --head" in b]
    assert len(recipe) == 1, "the README must hold exactly one cluster recipe"
    return recipe[0]


def test_readme_cluster_recipe_runs_verbatim_from_a_clean_home(tmp_path):
    recipe = readme_cluster_recipe()
    jobs = [line for line in recipe.splitlines() if line.startswith("ray job submit")]
    assert [("emergent train" in j, "emergent sweep" in j) for j in jobs] == [(True, False), (False, True)]
    assert all("logdir=$PWD/runs" in j for j in jobs) and "ray start --address=" in recipe
    assert "ray.learners=2" in jobs[0]
    # the tiny budget and a logdir under tmp_path are appended to each job's command line
    lines = [
        job.split("#")[0].rstrip() + " " + " ".join(f"'{a}'" for a in [*tiny, f"logdir={tmp_path}/runs"])
        for job, tiny in zip(jobs, (TINY_JOB, TINY_SWEEP))
    ]
    # after the train job, its one-learner twin: a plain driver on the cluster (no second upload)
    twin = lines[0].split(" -- ")[1] + " ray.learners=1 run_name=one_learner"
    script = recipe.replace(jobs[0], f"{lines[0]}\n{twin}").replace(jobs[1], lines[1])
    home = tmp_path / "home"
    home.mkdir()  # no ~/.ray/auth_token: the recipe must make its own
    # no Ray setting from outside, but the workers' priority (conftest: beside the quickstart's
    # training processes, Ray's default nice 15 starves the job's workers for minutes)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k == "RAY_worker_niceness"}
    env.update(
        HOME=str(home),
        RAY_USAGE_STATS_ENABLED="0",
        PATH=os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]),
    )
    ok = False
    try:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "succeeded" in out, out[-3000:]  # the CLI prints: Job ... succeeded
        ok = True  # the recipe's own `ray stop` ran
    finally:
        if not ok:
            subprocess.run(
                ["bash", "-c", "ray stop --force"], env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True
            )
    assert (home / ".ray" / "auth_token").is_file()
    assert out.count("succeeded") >= 2, out[-3000:]
    one = tmp_path / "runs" / "quickstart" / "one_learner"
    two = [p for p in (tmp_path / "runs").glob("quickstart/*") if p != one]
    assert len(two) == 1 and (two[0] / "last.pt").is_file()
    assert load_checkpoint(two[0] / "last.pt")["config"].count("learners: 2") == 1
    logged = scalars(two[0])
    assert logged[tags.eval_tag("test", "exact_match")][-1][0] == 4
    assert set(logged) == set(scalars(one)) and len(logged) > 10  # two learners log what one logs
    seeds = tmp_path / "runs" / "quickstart_seeds"  # the sweep: every run done, on a cluster of two nodes
    assert sorted(p.parent.name for p in seeds.glob("*/done.json")) == ["seed0", "seed1", "seed2"]
    assert all(scalars(seeds / f"seed{s}")[tags.eval_tag("test", "exact_match")][-1][0] == 4 for s in range(3))
