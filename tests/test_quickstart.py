"""The README's main command, as written, reaches the acceptance bar (about 2 min on 2 cores)."""
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_cli
from emergent.platform import tags


@pytest.mark.slow
def test_quickstart_learns_3_digit_addition(tmp_path):
    proc = run_cli("train", "configs/quickstart.yaml", f"logdir={tmp_path}", "progress=false", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    acc = EventAccumulator(str(tmp_path / "quickstart" / "supervised_L2_d128_learned_s0"))
    acc.Reload()
    final = {t: acc.Scalars(t)[-1] for t in (tags.eval_tag("test", "exact_match"),
                                            tags.eval_tag("test", "exact_match", 3))}
    assert all(e.step == 1800 for e in final.values())
    assert final[tags.eval_tag("test", "exact_match")].value >= 0.95
    assert final[tags.eval_tag("test", "exact_match", 3)].value >= 0.95
