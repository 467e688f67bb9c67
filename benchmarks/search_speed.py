"""Search speed, each figure beside its peer in the same run.

  python benchmarks/search_speed.py                          # random countdown-size networks, CPU or CUDA
  python benchmarks/search_speed.py --checkpoint runs/countdown/<run>/last.pt   # a trained policy

Prints:
  machinery  simulations/s of one move of search over B trees with a trivial evaluator
             (fixed priors and values: the tree work alone), leaves_per_call 1 (one leaf
             per simulation, as mctx) and 8; beside mctx's muzero_policy on the same
             batch, simulations and branching, when jax and mctx are installed
  searched   a trace written by search (every move searched, 32 simulations, top-k 4,
             leaves_per_call 8, the reward net valuing leaves, the verifier terminal
             states) vs a sampled trace of the same prompts (one KV-cached generate call,
             the fastest of 5),
             per-node key cache on (the default), the same with search.static (fixed
             shapes, no host sync inside a move: the GPU design), and on CUDA also with its
             calls replayed from CUDA graphs (search.cuda_graph), with each walk level
             compiled (search.compile), and with both, with the cache but no
             value network (priors only), and with --reference the full-prefix path: wall time, the ratio,
             and simulations/s; at L2 d128 (countdown) and L8 d512
  where      where one searched batch's time goes (each part timed with a device sync
             around it): the selection walk, node creation, leaf evaluation (the networks'
             forwards, the attention plan, the verifier), backups
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from emergent.agents.model import ModelConfig, TransformerLM
from emergent.agents.policy_value import PolicyValueEvaluator, state_verifier
from emergent.agents.reward_net import RewardNet
from emergent.agents.rollouts import sample_rollouts
from emergent.agents.search import Expansion, SearchConfig, init_tree, search, search_move, visits_policy
from emergent.agents.search.loop import path
from emergent.envs import TOKENIZER, make_task


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class FixedEvaluator:
    """Uniform priors over tokens 3..3+K, value 0.5 everywhere: no network, the tree work alone."""

    def __init__(self, k: int):
        self.k = k

    def begin(self, tree):
        pass

    def expand(self, states):
        M, dev = len(states.rows), states.tokens.device
        tokens = (3 + torch.arange(self.k, device=dev)).expand(M, self.k)
        return Expansion(torch.full((M, self.k), 1.0 / self.k, device=dev), tokens, torch.full((M,), 0.5, device=dev))

    def terminal_value(self, states):
        return torch.full((len(states.rows),), 0.5, device=states.tokens.device)


def machinery(batch: int, sims: int, k: int, depth: int, device, leaves: int, static: bool = False) -> float:
    """Simulations/s of one move over ``batch`` trees (states up to ``depth`` tokens deep)."""
    ev = FixedEvaluator(k)
    cfg = SearchConfig(num_simulations=sims, leaves_per_call=leaves, top_k=k, static=static)
    best = float("inf")
    for _ in range(3):
        tree = init_tree([np.array([1])] * batch, capacity=sims + 2, top_k=k, max_len=depth + 1, device=device)
        everyone = torch.ones(batch, dtype=torch.bool, device=device)
        path(cfg).evaluate_leaves(tree, tree.root[:, None], everyone[:, None], ev)
        sync(device)
        t0 = time.perf_counter()
        search_move(tree, everyone, ev, cfg, improved=visits_policy, generator=None, eos_id=TOKENIZER.eos_id, depth=0)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return batch * sims / best


def mctx_machinery(batch: int, sims: int, k: int, depth: int) -> float | None:
    try:
        import jax
        import jax.numpy as jnp
        import mctx
    except ImportError:
        return None

    def recurrent_fn(params, rng, action, embedding):
        out = mctx.RecurrentFnOutput(
            reward=jnp.zeros(batch),
            discount=jnp.ones(batch),
            prior_logits=jnp.zeros((batch, k)),
            value=jnp.full(batch, 0.5),
        )
        return out, embedding

    root = mctx.RootFnOutput(prior_logits=jnp.zeros((batch, k)), value=jnp.full(batch, 0.5), embedding=jnp.zeros(batch))
    policy = jax.jit(
        lambda rng: (
            mctx.muzero_policy(
                params=(), rng_key=rng, root=root, recurrent_fn=recurrent_fn, num_simulations=sims, max_depth=depth
            ).action
        )
    )
    rng = jax.random.PRNGKey(0)
    policy(rng).block_until_ready()  # compile
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        policy(rng).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return batch * sims / best


def networks(cfg: ModelConfig, device, checkpoint: str | None):
    torch.manual_seed(0)
    policy = TransformerLM(cfg, TOKENIZER.vocab_size)
    if checkpoint:
        from emergent.platform.checkpoint import load_checkpoint, load_model_state

        load_model_state(policy, load_checkpoint(checkpoint), checkpoint)
    value = RewardNet(cfg, TOKENIZER.vocab_size)
    value.trunk.load_state_dict(policy.state_dict())  # reward.init=policy: the judge starts from the policy
    return policy.to(device).eval(), value.to(device).eval()


def searched_vs_sampled(
    cfg: ModelConfig,
    problems,
    device,
    *,
    kv_cache: bool,
    checkpoint: str | None,
    value_net: bool = True,
    static: bool = False,
    graph: bool = False,
    compiled: bool = False,
    scfg: SearchConfig | None = None,
) -> dict:
    policy, value = networks(cfg, device, checkpoint)
    value = value if value_net else None
    task = make_task("countdown", format="scratchpad")
    prompts = [p.prompt for p in problems]
    ids = TOKENIZER.encode_prompts(prompts)
    gen = torch.Generator().manual_seed(0)
    sample_rollouts(policy, prompts[:8], 1, temperature=1.0, generator=gen, device=device)  # warm-up
    sampled, sampled_flops = float("inf"), 0.0
    for _ in range(5):  # the fastest of 5: a 0.15 s call varies by 20 % run to run, and the
        sync(device)  # fastest is the hardest baseline for the ratio
        t0 = time.perf_counter()
        ro = sample_rollouts(policy, prompts, 1, temperature=1.0, generator=gen, device=device)
        sync(device)
        sampled, sampled_flops = min(sampled, time.perf_counter() - t0), ro.flops

    def verify(rows, completions):
        return task.verdicts([problems[r] for r in rows], completions)

    ev = PolicyValueEvaluator(
        policy, value, top_k=4, verifier=state_verifier([len(i) for i in ids], verify), kv_cache=kv_cache
    )
    scfg = scfg or SearchConfig(
        num_simulations=32,
        leaves_per_call=8,
        top_k=4,
        confident_prior=1.0,
        static=static,
        cuda_graph=graph,
        compile=compiled,
    )
    t0 = time.perf_counter()
    with torch.no_grad():
        out = search(
            ids,
            ev,
            scfg,
            max_len=cfg.max_len,
            vocab_size=TOKENIZER.vocab_size,
            eos_id=TOKENIZER.eos_id,
            generator=gen,
            device=device,
        )
    sync(device)
    took = time.perf_counter() - t0
    sims = int(out.searched.sum()) * scfg.num_simulations
    return {
        "sampled_s": sampled,
        "searched_s": took,
        "ratio": took / sampled,
        "sims_per_s": sims / took,
        "flops_ratio": ev.flops / sampled_flops,
    }


def where_the_time_goes(cfg: ModelConfig, problems, device, *, checkpoint: str | None) -> dict[str, float]:
    """One searched batch with a timer (and a device sync) around each part of a simulation."""
    import emergent.agents.policy_value as pv
    import emergent.agents.search.dynamic as S  # the default path: its module's names are what it calls
    import emergent.agents.tree_kv as tkv

    spent: dict[str, float] = {}

    def timed(owner, name, label):
        f = getattr(owner, name)

        def g(*a, **kw):
            sync(device)
            t0 = time.perf_counter()
            try:
                return f(*a, **kw)
            finally:
                sync(device)
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, name, g)
        return owner, name, f

    parts = [
        (S, "select", "select (walk + node creation)"),
        (S, "add_children", "node creation"),
        (S, "evaluate_leaves", "leaf evaluation"),
        (tkv.TreeKV, "extend", "network forwards"),
        (tkv.TreeKV, "plan", "attention plan"),
        (pv.PolicyValueEvaluator, "terminal_value", "terminal values (verifier)"),
        (S, "backup", "backup"),
    ]
    saved = [timed(*part) for part in parts]
    try:
        r = searched_vs_sampled(cfg, problems, device, kv_cache=True, checkpoint=checkpoint)
    finally:
        for owner, name, f in saved:
            setattr(owner, name, f)
    return {"total": r["searched_s"], **{label: spent[label] for _, _, label in parts if label in spent}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--checkpoint", default=None, help="a countdown policy (L2 d128) to search with")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default=None, help="default: L2d128,L8d512 on CUDA, L2d128 on CPU")
    ap.add_argument("--reference", action="store_true", help="also time the full-prefix path (search.kv_cache=false)")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}"
    )

    print("\nmachinery: one move, 32 simulations, branching 4, trivial evaluator (simulations/s)")
    for leaves, static in ((1, False), (8, False), (8, True)):
        print(
            f"  emergent leaves_per_call={leaves}{' static' if static else '       '}: "
            f"{machinery(args.batch, 32, 4, 32, device, leaves, static):>12,.0f}"
        )
    peer = mctx_machinery(args.batch, 32, 4, 32)
    print(f"  mctx muzero_policy (jit):     {peer:>12,.0f}" if peer else "  mctx: not installed (pip install mctx)")

    problems = make_task("countdown", format="scratchpad").sample(np.random.default_rng(0), args.batch, "test", [3, 4])
    print(
        "\nsearched vs sampled trace, countdown prompts: every move searched, 32 simulations, top-k 4, "
        "8 leaves per call"
    )
    sizes = (args.sizes or ("L2d128,L8d512" if device.type == "cuda" else "L2d128")).split(",")
    for size in sizes:
        layers, width = (int(x) for x in size[1:].split("d"))
        cfg = ModelConfig(n_layer=layers, n_head=max(4, width // 64), d_model=width, max_len=64)
        ckpt = args.checkpoint if (layers, width) == (2, 128) else None
        # (kv_cache, value net, static, cuda_graph, compile)
        rows = [(True, True, False, False, False), (True, True, True, False, False), (True, False, False, False, False)]
        if device.type == "cuda":
            rows += [(True, True, True, True, False), (True, True, True, False, True), (True, True, True, True, True)]
        rows += [(False, True, False, False, False)] if args.reference else []
        for kv, value_net, static, graph, compiled in rows:
            name = (
                f"  {size} {'trained' if ckpt else 'random'} kv_cache={str(kv):5s}"
                f"{' static' if static else ''}{' cuda_graph' if graph else ''}{' compile' if compiled else ''}"
                f"{'' if value_net else ' no value net'}"
            )
            try:
                r = searched_vs_sampled(
                    cfg,
                    problems,
                    device,
                    kv_cache=kv,
                    checkpoint=ckpt,
                    value_net=value_net,
                    static=static,
                    graph=graph,
                    compiled=compiled,
                )
            except Exception as e:  # one row's failure (a first run on a new card) must not cost the others
                print(f"{name}: FAILED {type(e).__name__}: {e}")
                continue
            print(
                f"{name}: sampled {r['sampled_s']:.3f} s, "
                f"searched {r['searched_s']:.2f} s, ratio {r['ratio']:.0f}x, {r['sims_per_s']:,.0f} simulations/s"
            )
        # alphazero's defaults in the committed comparison (configs/countdown_alphazero.yaml): a Gumbel root,
        # 8 simulations over the top 4, confident moves (prior > 0.95) played unsearched
        az = SearchConfig(
            num_simulations=8, leaves_per_call=8, top_k=4, root="gumbel", max_considered=4, confident_prior=0.95
        )
        r = searched_vs_sampled(cfg, problems, device, kv_cache=True, checkpoint=ckpt, scfg=az)
        print(
            f"  {size} {'trained' if ckpt else 'random'} alphazero defaults (gumbel, 8 simulations, confident 0.95): "
            f"sampled {r['sampled_s']:.3f} s, searched {r['searched_s']:.2f} s, ratio {r['ratio']:.1f}x wall, "
            f"{r['flops_ratio']:.1f}x the ledger's FLOPs"
        )
        if size != sizes[0]:
            continue  # one breakdown (the countdown size) keeps a GPU run short
        parts = where_the_time_goes(cfg, problems, device, checkpoint=ckpt)
        print(
            f"  {size} where the time goes (timed with syncs: {parts.pop('total'):.2f} s in all): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items())
        )


if __name__ == "__main__":
    main()
