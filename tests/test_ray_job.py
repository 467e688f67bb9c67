"""The README's cluster recipe, run verbatim by bash from a home with no Ray state.

The recipe's job line gets a tiny budget appended (later overrides win), nothing else
changes. Its own module, so no in-process Ray (test_ray.py's fixture) runs beside the
cluster.
"""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, scalars
from emergent import tags

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time: see conftest

TINY_JOB = [*TINY, "train.steps=4", "eval.splits=[test]", "ray.workers=1"]


def readme_cluster_recipe() -> str:
    """The README's bash block that starts a cluster, submits a job and stops it."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    recipe = [b for b in blocks if "ray start --head" in b]
    assert len(recipe) == 1, "the README must hold exactly one cluster recipe"
    return recipe[0]


def test_readme_cluster_recipe_runs_verbatim_from_a_clean_home(tmp_path):
    recipe = readme_cluster_recipe()
    job = [line for line in recipe.splitlines() if line.startswith("ray job submit")]
    assert len(job) == 1 and "logdir=$PWD/runs" in job[0]
    # the tiny budget and a logdir under tmp_path are appended to the job's command line
    script = recipe.replace(job[0], job[0].split("#")[0].rstrip() + " " + " ".join(
        f"'{a}'" for a in [*TINY_JOB, f"logdir={tmp_path}/runs"]))
    home = tmp_path / "home"
    home.mkdir()  # no ~/.ray/auth_token: the recipe must make its own
    # no Ray setting from outside, but the workers' priority (conftest: beside the quickstart's
    # training processes, Ray's default nice 15 starves the job's workers for minutes)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k == "RAY_worker_niceness"}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0",
               PATH=os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]))
    ok = False
    try:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=400)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "succeeded" in out, out[-3000:]  # the CLI prints: Job ... succeeded
        ok = True  # the recipe's own `ray stop` ran
    finally:
        if not ok:
            subprocess.run(["bash", "-c", "ray stop --force"], env={**env, "RAY_AUTH_MODE": "token"},
                           capture_output=True)
    assert (home / ".ray" / "auth_token").is_file()
    runs = list((tmp_path / "runs").glob("quickstart/*"))
    assert len(runs) == 1 and (runs[0] / "last.pt").is_file()
    assert scalars(runs[0])[tags.eval_tag("test", "exact_match")][-1][0] == 4
