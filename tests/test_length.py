"""The length axis: the frontier metric on hand-made per-length scores."""
import numpy as np

from emergent import tags
from emergent.platform.evaluate import SplitResult, frontier, scalars


def test_frontier_is_the_last_length_of_the_unbroken_run_above_the_threshold():
    assert frontier({1: 1.0, 2: 0.995, 3: 0.99, 4: 0.7, 5: 1.0}, 0.99) == 3  # 5 passes, but 4 broke the run
    assert frontier({1: 1.0, 2: 1.0}, 0.99) == 2
    assert frontier({1: 0.5, 2: 1.0}, 0.99) == 0          # the first length fails: none reached
    assert frontier({5: 1.0, 6: 0.98, 7: 1.0}, 0.99) == 5  # a split starting above 1 counts from there
    assert frontier({5: 1.0, 6: 0.98}, 0.95) == 6          # the threshold is the option's
    assert frontier({1: 1.0, 3: 1.0}, 0.99) == 1           # a missing length ends the run


def split(exact_by_length: dict[int, float]) -> SplitResult:
    by = {d: {"exact_match": e, "token_accuracy": e, "edit_distance": 0.0} for d, e in exact_by_length.items()}
    overall = {"exact_match": float(np.mean(list(exact_by_length.values()))), "token_accuracy": 0.0,
               "edit_distance": 0.0}
    return SplitResult(overall, by)


def test_the_held_out_frontier_runs_from_the_test_lengths_into_the_extrapolation_lengths():
    results = {"train": split({1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}), "test": split({1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}),
               "extrapolate": split({5: 1.0, 6: 0.995, 7: 0.9, 8: 1.0})}
    got = scalars(results, 0.99)
    assert got[tags.eval_tag("test", tags.EVAL_FRONTIER)] == 4
    assert got[tags.eval_tag("extrapolate", tags.EVAL_FRONTIER)] == 6
    assert got[tags.EVAL_LENGTH_FRONTIER] == 6
    # a test length below the threshold caps it, whatever the longer lengths reach
    results["test"] = split({1: 1.0, 2: 0.5, 3: 1.0, 4: 1.0})
    assert scalars(results, 0.99)[tags.EVAL_LENGTH_FRONTIER] == 1
    # without the test split it starts at the extrapolation range (the training range taken as reached)
    del results["test"]
    assert scalars(results, 0.99)[tags.EVAL_LENGTH_FRONTIER] == 6
