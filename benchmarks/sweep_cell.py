"""Run one cell of a committed sweep alone, from its finished warm start, with overrides: a
probe of a method's settings at exactly the sweep's config (built by ``load_sweep``).

    python benchmarks/sweep_cell.py configs/sweeps/countdown_compare.yaml alphazero_d_model64_seed0 \\
        runs/countdown_compare/warm_start_d_model64_seed0/last.pt probe_name [key=value ...]

Logs go to runs/probes/<experiment>/<probe_name>; read them with benchmarks/run_diagnostics.py.
"""

import sys
import time

from emergent.platform.config import load_config, to_yaml
from emergent.platform.local import train_local
from emergent.platform.sweep import load_sweep

if __name__ == "__main__":
    sweep_file, cell, warm, name, *extra = sys.argv[1:]
    _, configs = load_sweep(sweep_file)
    cfg = load_config(
        base=to_yaml(configs[cell]),
        overrides=[f"improve.init_from={warm}", "logdir=runs/probes", f"run_name={name}", "progress=false", *extra],
    )
    t = time.time()
    train_local(cfg)
    print(f"{name}: {time.time() - t:.0f} s, logs in {cfg.run_dir}")
