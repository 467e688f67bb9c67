import numpy as np
import pytest

from emergent.envs import TASKS, TOKENIZER, make_task


def test_round_trip_every_character_and_special():
    text = TOKENIZER.alphabet
    assert TOKENIZER.decode(TOKENIZER.encode(text)) == text
    ids = np.arange(TOKENIZER.vocab_size)
    assert (TOKENIZER.encode(TOKENIZER.decode(ids)) == ids).all()


def test_specials_are_fixed():
    assert (TOKENIZER.pad_id, TOKENIZER.bos_id, TOKENIZER.eos_id) == (0, 1, 2)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_fits_the_shared_vocabulary(name):
    task = make_task(name)
    for fmt in task.formats:
        t = make_task(name, format=fmt)
        for p in t.sample(np.random.default_rng(0), 20, "train", [t.min_difficulty + 1]):
            assert TOKENIZER.decode(TOKENIZER.encode(p.prompt + p.trace)) == p.prompt + p.trace


def test_unknown_characters_are_named():
    with pytest.raises(ValueError, match="'a'"):
        TOKENIZER.encode("1+a")


def test_decode_rejects_out_of_range_ids():
    with pytest.raises(ValueError):
        TOKENIZER.decode([0, TOKENIZER.vocab_size])


def test_decode_completions_cuts_rows_at_length():
    ids = np.array([TOKENIZER.encode("123"), TOKENIZER.encode("45_")])
    assert TOKENIZER.decode_completions(ids, [3, 2]) == ["123", "45"]


def test_prompts_and_spans():
    ids = TOKENIZER.encode_prompts(["1+2=", "3="])
    assert [TOKENIZER.decode(i) for i in ids] == ["^1+2=", "^3="]
    rows = np.array([TOKENIZER.encode("^1+2=3$__"), TOKENIZER.encode("^3=45____")])
    assert TOKENIZER.decode_spans(rows, [5, 3], [7, 5]) == ["3", "45"]  # a final EOS is dropped
