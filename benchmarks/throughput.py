"""Training and generation throughput, each next to its baseline in the same run.

  python benchmarks/throughput.py                      # quickstart model, this machine
  python benchmarks/throughput.py --size large --steps 30

Prints, per model size:
  train     tokens/s and MFU: fp32 eager (baseline) vs bf16 autocast + fused AdamW
            (CUDA) vs that plus torch.compile (CUDA)
  generate  new tokens/s: KV cache vs full recompute (baseline), greedy, same prompts;
            and the static decode step (``generate(static=True)``: a fixed-shape step over a
            static cache, replayed as a CUDA graph on CUDA, eager on CPU)
  sample    rows that end at scattered steps (as sampled traces do): a fixed batch
            (baseline) vs dropping finished rows (generate's compact, the CPU default)
  peer      when transformers is installed: its GPT-2 at the same dimensions, trained on
            the same batch the same way (AdamW, bf16 autocast + fused on CUDA, compiled in
            the compiled row) and generating with its KV cache (``generate``, greedy)
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from emergent.agents.model import ModelConfig, TransformerLM
from emergent.agents.supervised import completion_nll
from emergent.agents.token_batch import encode_batch
from emergent.agents.trainer import OptimConfig, Trainer
from emergent.envs import TOKENIZER, make_task
from emergent.platform.run import peak_flops

SIZES = {
    "quickstart": ModelConfig(n_layer=2, n_head=4, d_model=128, max_len=64),
    "medium": ModelConfig(n_layer=6, n_head=8, d_model=512, max_len=128),
    "large": ModelConfig(n_layer=12, n_head=12, d_model=768, max_len=256),
    # the sizes of issue 12's learner and generation bars (quickstart is its 0.4M): training
    # rows of 250 tokens; generation's cache holds prompt + new tokens whatever the context
    "25m": ModelConfig(n_layer=8, n_head=8, d_model=512, max_len=256),
    "85m": ModelConfig(n_layer=12, n_head=12, d_model=768, max_len=256),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_train(cfg: ModelConfig, device, *, batch: int, steps: int, bf16: bool, compile: bool) -> dict:
    torch.manual_seed(0)
    model = TransformerLM(cfg, TOKENIZER.vocab_size).to(device)
    trainer = Trainer(model, OptimConfig(), 10_000, device, mixed_precision=bf16)
    loss_fn = torch.compile(completion_nll) if compile else completion_nll
    task = make_task("sorting")  # long enough rows to fill a context
    length = max(2, (cfg.max_len - 2) // 6)
    problems = task.sample(np.random.default_rng(0), batch, "train", [length])
    data = encode_batch(TOKENIZER, [p.prompt for p in problems], [p.trace for p in problems], cfg.max_len).to(device)
    B, T = data.inputs.shape

    def step():
        return trainer.step(
            lambda: loss_fn(model, data), tokens=B * T, flops=model.flops_per_token(T, backward=True) * B * T
        )

    for _ in range(3):  # warm-up (and compilation)
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        u = step()
    float(u.loss)
    sync(device)
    dt = time.perf_counter() - t0
    tokens = data.inputs.numel() * steps
    flops = u.flops * steps
    peak = peak_flops(device)
    return {
        "tokens_per_s": tokens / dt,
        "tflops": flops / dt / 1e12,
        "mfu": flops / dt / peak if peak else None,
        "params": model.num_params(),
        "seq": data.inputs.shape[1],
    }


def hf_gpt2(cfg: ModelConfig, device):
    """transformers' GPT-2 at ``cfg``'s dimensions (no dropout, SDPA attention), or None."""
    try:
        import transformers
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    conf = GPT2Config(
        vocab_size=TOKENIZER.vocab_size,
        n_positions=cfg.max_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=TOKENIZER.bos_id,
        eos_token_id=TOKENIZER.eos_id,
        pad_token_id=TOKENIZER.pad_id,
        attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(conf).to(device)


def bench_hf_train(cfg: ModelConfig, device, *, batch: int, steps: int, bf16: bool, compile: bool) -> dict | None:
    """The peer's training step on the same token batch as ``bench_train``: forward with
    labels (its own shifted cross-entropy), backward, AdamW."""
    model = hf_gpt2(cfg, device)
    if model is None:
        return None
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=bf16 and device.type == "cuda")
    fwd = torch.compile(model) if compile else model
    task = make_task("sorting")
    length = max(2, (cfg.max_len - 2) // 6)
    problems = task.sample(np.random.default_rng(0), batch, "train", [length])
    data = encode_batch(TOKENIZER, [p.prompt for p in problems], [p.trace for p in problems], cfg.max_len).to(device)
    ac = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else contextlib.nullcontext()

    def step():
        with ac:
            loss = fwd(input_ids=data.inputs, attention_mask=torch.ones_like(data.inputs), labels=data.inputs).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(3):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss.detach())
    sync(device)
    return {"tokens_per_s": data.inputs.numel() * steps / (time.perf_counter() - t0)}


def bench_hf_generate(cfg: ModelConfig, device, *, batch: int, new_tokens: int) -> dict | None:
    """The peer's greedy ``generate`` with its KV cache, the same 9-token prompts, exactly
    ``new_tokens`` per row."""
    model = hf_gpt2(cfg, device)
    if model is None:
        return None
    model.eval()
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(
        np.concatenate(
            [np.full((batch, 1), TOKENIZER.bos_id), rng.integers(3, TOKENIZER.vocab_size, size=(batch, 8))], 1
        )
    ).to(device)
    ac = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    kw = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=TOKENIZER.pad_id,
    )
    with torch.no_grad(), ac:
        model.generate(ids, **kw)
        sync(device)
        t0 = time.perf_counter()
        out = model.generate(ids, **kw)
        sync(device)
    return {"new_tokens_per_s": (out.shape[1] - ids.shape[1]) * batch / (time.perf_counter() - t0)}


def _timed_generate(
    cfg: ModelConfig,
    device,
    *,
    batch: int,
    new_tokens: int,
    loud_eos: bool = False,
    sample_seed: int | None = None,
    **kw,
):
    """A seeded model and ``batch`` random 8-token prompts; one warm-up call with the timed
    shapes (kernel plans, allocator), then one timed call. Returns (Generation, seconds).
    ``loud_eos`` scales the EOS embedding so rows stop after a geometric number of steps."""
    torch.manual_seed(0)
    model = TransformerLM(cfg, TOKENIZER.vocab_size).to(device).eval()
    if loud_eos:
        with torch.no_grad():
            model.wte.weight[TOKENIZER.eos_id] *= 4
    rng = np.random.default_rng(0)
    prompts = [
        np.concatenate([[TOKENIZER.bos_id], rng.integers(3, TOKENIZER.vocab_size, size=8)]) for _ in range(batch)
    ]
    gen = lambda: None if sample_seed is None else torch.Generator().manual_seed(sample_seed)  # noqa: E731
    ac = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with ac:
        model.generate(prompts, new_tokens, generator=gen(), **kw)
        sync(device)
        t0 = time.perf_counter()
        out = model.generate(prompts, new_tokens, generator=gen(), **kw)
        sync(device)
    return out, time.perf_counter() - t0


def bench_generate(
    cfg: ModelConfig, device, *, batch: int, new_tokens: int, use_cache: bool, static: bool = False
) -> dict:
    # eos_id=-1: no row stops early, so both paths generate exactly new_tokens per row
    out, dt = _timed_generate(
        cfg,
        device,
        batch=batch,
        new_tokens=new_tokens,
        eos_id=-1,
        pad_id=TOKENIZER.pad_id,
        use_cache=use_cache,
        static=static,
        compact=False if static else None,
    )
    return {"new_tokens_per_s": out.tokens.numel() / dt, "seconds": dt}


def bench_ragged(cfg: ModelConfig, device, *, batch: int, new_tokens: int, compact: bool) -> dict:
    """Sampled rows that end at scattered steps, as self-improvement's traces do: a fixed
    batch runs every row until the longest ends; ``compact`` drops the finished ones."""
    out, dt = _timed_generate(
        cfg,
        device,
        batch=batch,
        new_tokens=new_tokens,
        loud_eos=True,
        sample_seed=0,
        eos_id=TOKENIZER.eos_id,
        pad_id=TOKENIZER.pad_id,
        temperature=1.0,
        compact=compact,
    )
    written = int(out.lengths.sum() + out.finished.sum())  # tokens the rows really wrote (EOS included)
    return {"tokens_per_s": written / dt, "seconds": dt, "mean_len": written / batch, "steps": out.tokens.shape[1]}


def profile_generate(cfg: ModelConfig, device, *, batch: int, new_tokens: int) -> None:
    """The kernels (CUDA) or ops (CPU) that one eager and one static generate call spend
    their time in, to say what bounds decoding at this size."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for static in (False, True):
        with profile(activities=acts) as prof:
            _timed_generate(
                cfg,
                device,
                batch=batch,
                new_tokens=new_tokens,
                eos_id=-1,
                pad_id=TOKENIZER.pad_id,
                static=static,
                compact=False,
            )
        print(f"  profile, static={static} (warm-up and timed call):")
        print(prof.key_averages().table(sort_by=key, row_limit=12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), action="append")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--gen-batch", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=None, help="default: the context less 10")
    ap.add_argument("--no-train", action="store_true", help="generation figures only")
    ap.add_argument(
        "--profile", action="store_true", help="also print the top kernels of one static and one eager generate call"
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}   torch {torch.__version__}")
    for size in args.size or ["quickstart"]:
        cfg = SIZES[size]
        print(f"\n== {size}: L={cfg.n_layer} d={cfg.d_model} heads={cfg.n_head} context={cfg.max_len}")
        variants = [("fp32 eager (baseline)", False, False)]
        if device.type == "cuda":
            variants += [("bf16 + fused AdamW", True, False), ("bf16 + fused AdamW + compile", True, True)]
        base = None
        for label, bf16, comp in [] if args.no_train else variants:
            r = bench_train(cfg, device, batch=args.batch, steps=args.steps, bf16=bf16, compile=comp)
            base = base or r["tokens_per_s"]
            mfu = f"  MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
            print(
                f"train    {label:<30} {r['tokens_per_s']:>12,.0f} tok/s  {r['tflops']:8.2f} TFLOP/s{mfu}"
                f"  x{r['tokens_per_s'] / base:.2f}   ({r['params'] / 1e6:.2f}M params, batch {args.batch}x{r['seq']})"
            )
            peer = bench_hf_train(cfg, device, batch=args.batch, steps=args.steps, bf16=bf16, compile=comp)
            if peer:
                print(
                    f"  peer   transformers GPT-2, same      {peer['tokens_per_s']:>12,.0f} tok/s"
                    f"  (emergent x{r['tokens_per_s'] / peer['tokens_per_s']:.2f})"
                )
        new = args.new_tokens or cfg.max_len - 10
        rec = bench_generate(cfg, device, batch=args.gen_batch, new_tokens=new, use_cache=False)
        kv = bench_generate(cfg, device, batch=args.gen_batch, new_tokens=new, use_cache=True)
        st = bench_generate(cfg, device, batch=args.gen_batch, new_tokens=new, use_cache=True, static=True)
        print(
            f"generate full recompute (baseline)     {rec['new_tokens_per_s']:>12,.0f} new tok/s  "
            f"({args.gen_batch} rows x {new})"
        )
        print(
            f"generate KV cache                      {kv['new_tokens_per_s']:>12,.0f} new tok/s  "
            f"x{kv['new_tokens_per_s'] / rec['new_tokens_per_s']:.2f}"
        )
        print(
            f"generate static step{' (CUDA graph)' if device.type == 'cuda' else ' (eager)     '}      "
            f"{st['new_tokens_per_s']:>12,.0f} new tok/s  x{st['new_tokens_per_s'] / rec['new_tokens_per_s']:.2f}"
        )
        hf = bench_hf_generate(cfg, device, batch=args.gen_batch, new_tokens=new)
        if hf:
            print(
                f"  peer   transformers GPT-2 generate   {hf['new_tokens_per_s']:>12,.0f} new tok/s  "
                f"(emergent KV cache x{kv['new_tokens_per_s'] / hf['new_tokens_per_s']:.2f}, "
                f"static x{st['new_tokens_per_s'] / hf['new_tokens_per_s']:.2f})"
            )
        if args.profile:
            profile_generate(cfg, device, batch=args.gen_batch, new_tokens=new)
        fixed = bench_ragged(cfg, device, batch=args.gen_batch, new_tokens=new, compact=False)
        drop = bench_ragged(cfg, device, batch=args.gen_batch, new_tokens=new, compact=True)
        print(
            f"sample, ragged ends: fixed batch       {fixed['tokens_per_s']:>12,.0f} written tok/s  "
            f"(mean {fixed['mean_len']:.1f} of {fixed['steps']} steps)"
        )
        print(
            f"sample, ragged ends: drop finished     {drop['tokens_per_s']:>12,.0f} written tok/s  "
            f"x{drop['tokens_per_s'] / fixed['tokens_per_s']:.2f}"
        )


if __name__ == "__main__":
    main()
