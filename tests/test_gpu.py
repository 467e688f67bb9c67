"""CUDA-only checks: skipped on machines without a GPU (see conftest.py)."""

import pytest
import torch
from conftest import TINY, run_cli, scalars

from emergent import tags
from emergent.agents.model import ModelConfig, TransformerLM
from emergent.agents.supervised import completion_nll
from emergent.agents.token_batch import encode_batch
from emergent.agents.trainer import OptimConfig, Trainer
from emergent.envs import TOKENIZER

pytestmark = pytest.mark.gpu


def test_cuda_kv_cache_equals_recompute():
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(n_layer=2, n_head=4, d_model=64, max_len=48, pos="rope"), TOKENIZER.vocab_size)
    model = model.cuda().double().eval()  # fp64: the comparison tests the cache, not rounding
    prompts = [torch.randint(3, TOKENIZER.vocab_size, (n,)).numpy() for n in (3, 9, 5, 12)]
    a = model.generate(prompts, 30, eos_id=2, pad_id=0)
    b = model.generate(prompts, 30, eos_id=2, pad_id=0, use_cache=False)
    assert torch.equal(a.tokens, b.tokens)


def test_cuda_bf16_fused_training_learns():
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(n_layer=2, n_head=4, d_model=64, max_len=32), TOKENIZER.vocab_size).cuda()
    trainer = Trainer(model, OptimConfig(lr=1e-2, min_lr=1e-2, warmup_steps=1), 100, torch.device("cuda"))
    assert trainer.mixed_precision and trainer.optimizer.defaults["fused"]
    batch = encode_batch(TOKENIZER, ["1+1=", "2+3=", "4+4="], ["2", "5", "8"], max_len=32).to("cuda")
    losses = [float(trainer.step(lambda: completion_nll(model, batch), tokens=1, flops=1.0).loss) for _ in range(101)]
    assert losses[-1] < losses[0] / 4


def test_cuda_run_through_the_cli_logs_mfu(tmp_path):
    proc = run_cli("train", *TINY, "train.steps=10", "device=cuda", "train.compile=true", f"logdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert tags.PERF_MFU in scalars(next((tmp_path / "quickstart").iterdir()))
