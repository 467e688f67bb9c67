import numpy as np
import pytest
import torch

from emergent.agents.model import PLACE_SCHEMES, POS_SCHEMES, ModelConfig, TransformerLM, digit_places
from emergent.agents.token_batch import encode_batch
from emergent.envs import TOKENIZER

V = TOKENIZER.vocab_size


def make(pos="learned", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=4, d_model=32, max_len=48, pos=pos, **kw)
    return TransformerLM(cfg, V).eval()


def random_prompts(n, seed=0, pos="learned"):
    """Random tokens after BOS; for a place scheme each ends in '=', as its prompts must
    (an arithmetic prompt: what follows is the answer)."""
    rng = np.random.default_rng(seed)
    end = TOKENIZER.encode("=") if pos in PLACE_SCHEMES else []
    return [np.concatenate([[TOKENIZER.bos_id], rng.integers(3, V, size=rng.integers(2, 12)), end]) for _ in range(n)]


@pytest.mark.parametrize("pos", POS_SCHEMES)
def test_kv_cache_greedy_equals_recompute(pos):
    model = make(pos)
    prompts = random_prompts(8, pos=pos)
    a = model.generate(prompts, 30, eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id)
    b = model.generate(prompts, 30, eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id, use_cache=False)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_cache", [True, False])
def test_dropping_finished_rows_changes_no_output(use_cache):
    # A large EOS embedding makes rows end at scattered steps, so the batch is compacted
    # several times; every row must still get exactly the tokens it gets in a fixed batch.
    model = make()
    with torch.no_grad():
        model.wte.weight[TOKENIZER.eos_id] *= 6
    prompts = random_prompts(32, seed=2)
    kw = dict(eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id, use_cache=use_cache)
    fixed = model.generate(prompts, 30, compact=False, **kw)
    lengths = fixed.lengths[fixed.finished]
    assert fixed.finished.float().mean() >= 0.5 and len(set(lengths.tolist())) >= 4  # staggered ends
    compacted = model.generate(prompts, 30, compact=True, **kw)
    assert torch.equal(compacted.tokens, fixed.tokens)
    assert torch.equal(compacted.lengths, fixed.lengths)
    assert torch.equal(compacted.finished, fixed.finished)
    torch.testing.assert_close(compacted.logprobs, fixed.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos", POS_SCHEMES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_static_decode_writes_what_the_dynamic_cache_writes(pos, temperature):
    # The fixed-shape step (a static cache written at a device-held position, the step a
    # CUDA graph captures) runs eagerly on CPU: the same tokens, EOS and lengths, sampled too.
    model = make(pos)
    with torch.no_grad():
        model.wte.weight[TOKENIZER.eos_id] *= 4  # rows end at scattered steps
    prompts = random_prompts(24, seed=3, pos=pos)
    kw = dict(eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id, temperature=temperature, compact=False)
    a = model.generate(prompts, 30, generator=torch.Generator().manual_seed(1), **kw)
    b = model.generate(prompts, 30, generator=torch.Generator().manual_seed(1), static=True, **kw)
    assert 0 < int(a.finished.sum()) < len(prompts) or temperature == 0.0
    for field in ("tokens", "lengths", "finished"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-6, rtol=0)


def test_static_decode_refuses_what_it_cannot_do():
    model = make()
    for bad in (dict(compact=True), dict(use_cache=False)):
        with pytest.raises(ValueError, match="static decoding needs"):
            model.generate(random_prompts(2), 5, eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id, static=True, **bad)


@pytest.mark.gpu
@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_graph_decode_equals_eager_decode_on_cuda(bf16):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = make("rope").cuda()
    with torch.no_grad():
        model.wte.weight[TOKENIZER.eos_id] *= 4
    prompts = random_prompts(64, seed=4)
    kw = dict(eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id, compact=False)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        for temperature in (0.0, 1.0):
            g = dict(generator=torch.Generator().manual_seed(2), temperature=temperature)
            a = model.generate(prompts, 30, **g, **kw)
            b = model.generate(prompts, 30, static=True, **dict(g, generator=torch.Generator().manual_seed(2)), **kw)
            assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)
            assert torch.equal(a.finished, b.finished)


@pytest.mark.parametrize("pos", POS_SCHEMES)
def test_left_padded_rows_match_unbatched(pos):
    model = make(pos)
    prompts = random_prompts(5, seed=1, pos=pos)
    batched = model.generate(prompts, 20, eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id)
    for i, p in enumerate(prompts):
        alone = model.generate([p], 20, eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id)
        n = int(alone.lengths[0])
        assert torch.equal(alone.tokens[0, :n], batched.tokens[i, :n])


def test_generation_stops_per_row_at_eos():
    model = make()
    with torch.no_grad():  # make EOS the argmax after exactly one token for every row
        model.lm_head.weight.data.zero_()
    out = model.generate(random_prompts(4), 10, eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id)
    # all-zero logits: argmax is id 0 (PAD) forever; no EOS, so rows run to the limit
    assert (out.lengths == 10).all() and not out.finished.any()
    bias = torch.zeros(V)
    bias[TOKENIZER.eos_id] = 1.0
    model.lm_head = torch.nn.Linear(32, V, bias=True)
    model.lm_head.weight.data.zero_()
    model.lm_head.bias.data.copy_(bias)
    out = model.generate(random_prompts(4), 10, eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id)
    assert out.finished.all() and (out.lengths == 0).all() and out.tokens.shape[1] == 1


def test_sampling_is_reproducible_with_a_generator():
    model = make()
    prompts = random_prompts(6)
    kw = dict(eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id, temperature=1.0, top_k=5)
    a = model.generate(prompts, 15, generator=torch.Generator().manual_seed(3), **kw)
    b = model.generate(prompts, 15, generator=torch.Generator().manual_seed(3), **kw)
    c = model.generate(prompts, 15, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert (a.logprobs <= 0).all()


@pytest.mark.parametrize("pos", POS_SCHEMES)
def test_masked_path_equals_causal_path(pos):
    model = make(pos)
    idx = torch.randint(3, V, (3, 17))
    causal = model(idx)
    masked = model(idx, key_valid=torch.ones(3, 17, dtype=torch.bool))
    torch.testing.assert_close(causal, masked, atol=1e-5, rtol=1e-5)


def test_context_limit_is_enforced():
    model = make()
    with pytest.raises(ValueError, match="no room"):
        model.generate([np.ones(48, dtype=np.int64)], 5, eos_id=2, pad_id=0)


def test_encode_batch_masks_prompt_and_padding():
    b = encode_batch(TOKENIZER, ["12+3=", "1+1="], ["51", "2"], max_len=16)
    assert TOKENIZER.decode(b.inputs[0]) == "^12+3=51"
    assert TOKENIZER.decode(b.targets[0]) == "12+3=51$"
    assert TOKENIZER.decode(b.targets[0][b.loss_mask[0].bool()]) == "51$"
    assert TOKENIZER.decode(b.targets[1][b.loss_mask[1].bool()]) == "2$"
    assert b.loss_mask[1, -2:].sum() == 0  # padding of the shorter row carries no loss
    with pytest.raises(ValueError, match="max_len"):
        encode_batch(TOKENIZER, ["1234567+1234567="], ["2469134"], max_len=16)


def test_flops_per_token_matches_a_counted_forward():
    """The analytic count equals the FLOPs torch counts for the same computation."""
    from torch.utils.flop_counter import FlopCounterMode

    model = make()
    B, T, L, H, C = 2, 20, model.cfg.n_layer, model.cfg.n_head, model.cfg.d_model
    idx = torch.randint(3, V, (B, T))
    with FlopCounterMode(display=False) as counter:
        model(idx)
    # torch's counter skips the fused CPU attention kernel, so it sees the weight matmuls only
    assert model.flops_per_token(0, backward=False) == pytest.approx(counter.get_total_flops() / (B * T))
    # ...and the attention term is QK^T plus AV, counted on explicit matmuls of the same shapes
    q = k = v = torch.randn(B, H, T, C // H)
    with FlopCounterMode(display=False) as counter:
        (q @ k.transpose(-1, -2)).softmax(-1) @ v
    attention = L * counter.get_total_flops() / (B * T)
    total = model.flops_per_token(T, backward=False)
    assert total - model.flops_per_token(0, backward=False) == pytest.approx(attention)
    assert model.flops_per_token(T, backward=True) == 3 * total


@pytest.mark.parametrize(
    "bad",
    [
        dict(pos="alibi"),
        dict(d_model=30, n_head=4),
        dict(n_layer=0),
        dict(dropout=1.0),
        dict(pos="coupled", d_model=12, n_head=4),
        dict(pos="learned", place_offset=3),
        dict(pos="abacus", place_offset=-1),
    ],
)
def test_bad_model_config(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad).validate()


def test_a_few_steps_of_learning_reduce_the_loss():
    from emergent.agents.supervised import completion_nll
    from emergent.agents.trainer import OptimConfig, Trainer

    model = make()
    trainer = Trainer(model, OptimConfig(lr=1e-2, min_lr=1e-2, warmup_steps=1), 100, torch.device("cpu"))
    batch = encode_batch(TOKENIZER, ["1+1=", "2+3=", "4+4="], ["2", "5", "8"], max_len=16)
    with torch.no_grad():
        before = float(completion_nll(model, batch))
    for _ in range(100):
        u = trainer.step(lambda: completion_nll(model, batch), tokens=batch.inputs.numel(), flops=1.0)
    assert float(u.loss) < before / 4 and trainer.step_count == 100


def places(text: str) -> list[int]:
    return digit_places(torch.as_tensor(TOKENIZER.encode(text))[None])[0].tolist()


def test_a_digits_place_is_its_significance_in_the_operands_and_in_the_reversed_answer():
    # 123 + 45 = 168, the answer written reversed ("861"): the paper's rule (McLeish et al.
    # 2024; Cho et al. 2024) gives each digit its place in its number, least significant 1,
    # so the 3 and the 5 and the answer's 8 share place 1; other tokens have none (0)
    assert places("^123+45=861$") == [0, 3, 2, 1, 0, 2, 1, 0, 1, 2, 3, 0]
    assert places("^7*1234=8638$") == [0, 1, 0, 4, 3, 2, 1, 0, 1, 2, 3, 4, 0]
    # a continuation (a KV-cached decode) counts on from the place of the token before it
    full = digit_places(torch.as_tensor(TOKENIZER.encode("^99+9=801$"))[None])
    for cut in range(6, 10):
        tail = digit_places(torch.as_tensor(TOKENIZER.encode("^99+9=801$"))[None, cut:], full[:, cut - 1])
        assert tail.tolist() == full[:, cut:].tolist()
    # an answer's places read no later token: changing what follows changes none before it
    assert places("^12+3=5123")[:8] == places("^12+3=51")


@pytest.mark.parametrize("pos", PLACE_SCHEMES)
def test_place_schemes_read_places_not_positions(pos):
    # position ids are not read (a learned table would shift every output); places are
    model = make(pos)
    a = torch.as_tensor(TOKENIZER.encode("^123+45="))[None]
    torch.testing.assert_close(model(a, torch.arange(8)[None] + 20), model(a))
    with torch.no_grad():
        place = digit_places(a)
        assert not torch.allclose(model.hidden(a, place=place), model.hidden(a, place=place + (place > 0)))


def test_abacus_offsets_digit_places_in_training_only():
    model = make("abacus", place_offset=10)
    idx = torch.as_tensor(TOKENIZER.encode("^123+45=861$"))[None].expand(64, -1)
    model.eval()
    assert torch.equal(model._places(idx, None), digit_places(idx))
    model.train()
    torch.manual_seed(0)
    got = model._places(idx, None)
    offset = got - digit_places(idx)
    assert (offset[:, [0, 4, 7, 11]] == 0).all()  # tokens that are not digits get no place
    digits = offset[:, [1, 2, 3, 5, 6, 8, 9, 10]]
    assert (digits == digits[:, :1]).all()  # one offset per sequence
    assert set(digits[:, 0].tolist()) == set(range(11))  # every offset in [0, 10] drawn (64 draws)
