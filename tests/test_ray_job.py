"""A Ray cluster job: `ray start --head`, `ray job submit ... runtime=ray`, succeeded, `ray stop`.

Its own module, so no in-process Ray (test_ray.py's fixture) is running beside the cluster.
"""
import os
import subprocess
import sys

import pytest

from test_ray import SMALL

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def test_ray_job_submit_succeeds(tmp_path):
    """`ray start --head`, `ray job submit ... runtime=ray`, SUCCEEDED, `ray stop`."""
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([ray_bin, "start", "--head", "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, cwd=tmp_path)
    try:
        job = subprocess.run([ray_bin, "job", "submit", "--working-dir", root, "--", sys.executable, "-m", "emergent",
                              "train", *SMALL, "train.steps=4", f"logdir={tmp_path}/runs"],
                             env=env, capture_output=True, text=True, timeout=400, cwd=root)
        out = job.stdout + job.stderr
        assert job.returncode == 0 and "succeeded" in out, out[-3000:]  # the CLI prints: Job ... succeeded
        assert list((tmp_path / "runs").rglob("last.pt"))
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True)
