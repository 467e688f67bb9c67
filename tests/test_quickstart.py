"""The README's main command, `emergent train`, learns on more than one seed.

Seeds 0 and 1 run side by side, one thread each (about 4 minutes on 2 cores). The
bars sit a little under what the five-seed measurement in configs/quickstart.yaml
gives (1.0 everywhere): a held-out 1-digit fact costs about 0.1 of its difficulty's
score (the test split has ten of them), and a machine may miss one.
"""
import subprocess
import sys

import pytest

from conftest import ROOT, cli_env, scalars
from emergent import tags

SEEDS = (0, 1)


@pytest.mark.slow
@pytest.mark.xdist_group("quickstart")  # two processes of its own: on one xdist worker, alone
def test_quickstart_learns_3_digit_addition_on_two_seeds(tmp_path):
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    procs = {s: subprocess.Popen([sys.executable, "-m", "emergent", "train", f"seed={s}", f"logdir={tmp_path}",
                                  "progress=false"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for s in SEEDS}
    for s, proc in procs.items():
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-2000:]
    for s in SEEDS:
        logged = scalars(tmp_path / "quickstart" / f"supervised_L2_d128_learned_s{s}")
        final = {t: series[-1] for t, series in logged.items() if t.startswith("eval/test/")}
        step, overall = final[tags.eval_tag("test", "exact_match")]
        assert step == 1800 and overall >= 0.97, (s, step, overall)
        for d in (1, 2, 3):
            assert final[tags.eval_tag("test", "exact_match", d)][1] >= 0.88, (s, d, final)
