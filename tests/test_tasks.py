import dataclasses
import random

import numpy as np
import pytest

from emergent.envs import TASKS, SplitSpec, extract_answer, make_task, score_strings
from emergent.envs.countdown import ExpressionError, is_solution, parse_expression, solve
from emergent.platform.problem_stream import ProblemStream


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def all_formats():
    return [(n, f) for n in sorted(TASKS) for f in TASKS[n].formats]


@pytest.mark.parametrize("name,fmt", all_formats())
def test_gold_traces_verify_and_corruptions_do_not(name, fmt):
    task = make_task(name, format=fmt)
    lo = task.min_difficulty
    problems = task.sample(np.random.default_rng(1), 60, "train", [lo, lo + 1, lo + 2])
    scores = task.verify_batch(problems, [p.trace for p in problems])
    assert scores.exact.all() and (scores.token_accuracy == 1).all() and (scores.edit_distance == 0).all()
    assert all(extract_answer(p.trace) == p.answer for p in problems)
    wrong = task.verify_batch(problems, [p.trace + "1" for p in problems])
    assert not wrong.exact.any()
    assert ((wrong.token_accuracy < 1) & (wrong.edit_distance > 0)).all()


def verdict_cases():
    """(task, format, check_steps): step checking only where the format has a step checker."""
    return [
        (n, f, c) for n, f in all_formats() for c in (False, True) if not c or make_task(n, format=f).has_step_checker
    ]


@pytest.mark.parametrize("name,fmt,check_steps", verdict_cases())
def test_verdicts_are_verify_batch_exact(name, fmt, check_steps):
    # the verdict-only path (training labels, search terminals) says what verify_batch says:
    # gold traces, traces with one character changed anywhere, a false step, garbage
    task = make_task(name, format=fmt)
    task.check_steps = check_steps
    problems = task.sample(np.random.default_rng(2), 80, "train", [task.min_difficulty, task.min_difficulty + 1])
    rng = random.Random(0)
    completions = []
    for p in problems:
        t = p.trace
        i = rng.randrange(len(t))
        completions += [t, t[:i] + rng.choice("0123456789+-*>,=") + t[i + 1 :], t[:i], "", ">" + p.answer, p.answer]
    rows = [p for p in problems for _ in range(6)]
    verdicts = task.verdicts(rows, completions)
    assert verdicts.dtype == bool and verdicts.shape == (len(rows),)
    assert np.array_equal(verdicts, task.verify_batch(rows, completions).exact)
    assert verdicts[::6].all() and 0 < verdicts.mean() < 1
    assert task.verdicts([], []).shape == (0,)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generation_is_deterministic_and_difficulty_matters(name):
    task = make_task(name)
    lo = task.min_difficulty
    a = task.sample(np.random.default_rng(7), 10, "train", [lo + 1])
    b = task.sample(np.random.default_rng(7), 10, "train", [lo + 1])
    assert a == b
    small = task.sample(np.random.default_rng(7), 30, "train", [lo])
    large = task.sample(np.random.default_rng(7), 30, "train", [lo + 3])
    assert np.mean([len(p.prompt) for p in large]) > np.mean([len(p.prompt) for p in small])
    assert {p.difficulty for p in large} == {lo + 3}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_training_problems_never_appear_in_test_or_extrapolate(name):
    task = make_task(name)
    lo = task.min_difficulty
    spec = SplitSpec(train=(lo, lo + 1), extrapolate=(lo + 2, lo + 3))
    stream = ProblemStream(task, spec, seed=0, train_size=None)
    train = {p.prompt for p in stream.next(3000)}
    fixed = ProblemStream(task, spec, seed=0, train_size=500).fixed
    train |= {p.prompt for p in fixed}
    rng = np.random.default_rng(3)
    test = task.sample(rng, 400, "test", spec.difficulties("test"))
    extra = task.sample(rng, 200, "extrapolate", spec.difficulties("extrapolate"))
    assert train.isdisjoint(p.prompt for p in test)
    assert train.isdisjoint(p.prompt for p in extra)
    assert all(task.is_heldout(p.prompt) for p in test)
    assert all(p.difficulty > lo + 1 for p in extra)
    # the test split is not empty of variety: it really samples the held-out space
    assert len({p.prompt for p in test}) > 5


def test_split_spec_rejects_overlapping_extrapolation():
    with pytest.raises(ValueError, match="above"):
        SplitSpec(train=(1, 3), extrapolate=(3, 5)).validate(make_task("addition"))
    with pytest.raises(ValueError, match="supports"):
        SplitSpec(train=(1, 3), extrapolate=(4, 99)).validate(make_task("addition"))
    with pytest.raises(ValueError):
        make_task("addition").sample(np.random.default_rng(0), 1, "validation", [1])


def test_fixed_training_set_is_shared_across_run_seeds():
    task = make_task("sorting")
    spec = SplitSpec(train=(2, 4), extrapolate=(5, 6))
    a = ProblemStream(task, spec, seed=0, train_size=50)
    b = ProblemStream(task, spec, seed=1, train_size=50)
    assert a.fixed == b.fixed and len(a.fixed) == 50
    assert a.next(20) != b.next(20)  # the order depends on the run seed
    assert set(p.prompt for p in a.next(200)) <= {p.prompt for p in a.fixed}


def test_stream_resumes_exactly():
    task = make_task("addition")
    spec = SplitSpec(train=(1, 3), extrapolate=(4, 5))
    s = ProblemStream(task, spec, seed=5, train_size=None)
    s.next(10)
    state = s.state_dict()
    expected = s.next(10)
    t = ProblemStream(task, spec, seed=99, train_size=None)
    t.load_state_dict(state)
    assert t.next(10) == expected


def test_addition_formats():
    p = make_task("addition", format="plain").problem(123, 459, 3)
    assert (p.prompt, p.answer, p.trace) == ("123+459=", "582", "582")
    p = make_task("addition", format="reversed").problem(123, 459, 3)
    assert p.answer == p.trace == "285"
    p = make_task("addition", format="scratchpad").problem(123, 459, 3)
    assert p.trace == "3+9+0=12,2+5+1=8,1+4+0=5>582"


def test_multiplication_scratchpad_lists_partial_products():
    p = make_task("multiplication", format="scratchpad").problem(123, 45, 3)
    assert p.trace == "123*5=615,123*40=4920>5535"
    p = make_task("multiplication", format="scratchpad").problem(12, 0, 2)
    assert p.trace == "12*0=0>0"
    t = make_task("multiplication", multiplier_digits=1)
    assert all(len(q.prompt.split("*")[1]) == 2 for q in t.sample(np.random.default_rng(0), 20, "train", [4]))


def test_sorting():
    t = make_task("sorting")
    for p in t.sample(np.random.default_rng(0), 20, "train", [6]):
        values = [int(x) for x in p.prompt.rstrip("=").split(",")]
        assert p.answer == ",".join(map(str, sorted(values)))


def test_score_strings_matches_reference_levenshtein():
    rng = random.Random(0)
    alphabet = "0123,"
    pred = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))) for _ in range(300)]
    gold = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))) for _ in range(300)]
    s = score_strings(pred, gold)
    for i, (a, b) in enumerate(zip(pred, gold)):
        longest = max(len(a), len(b), 1)
        assert s.edit_distance[i] == pytest.approx(levenshtein(a, b) / longest)
        assert s.exact[i] == (a == b)
        expected_acc = 1.0 if a == b else sum(x == y for x, y in zip(a, b)) / longest
        assert s.token_accuracy[i] == pytest.approx(expected_acc)


# -- countdown ---------------------------------------------------------------------------


def test_countdown_parser_evaluates_exactly_and_safely():
    value, used = parse_expression("(7*8)-3")
    assert value == 53 and used == [7, 8, 3]
    assert parse_expression("7/2*2")[0] == 7  # exact rationals, no float rounding
    for bad in ["__import__('os')", "2**3", "1/0", "(1+2", "1+", "", "-3+5", "3 + 5", "1" * 100]:
        with pytest.raises(ExpressionError):
            parse_expression(bad)


def test_countdown_verifier_rules():
    numbers, target = [3, 7, 8, 25], 53
    assert is_solution(numbers, target, "7*8-3")
    assert is_solution(numbers, target, "(25+3)+(8+7)*1") is False  # 1 is not given
    assert not is_solution(numbers, target, "7*8-3-3+3")  # 3 used three times
    assert not is_solution(numbers, target, "25+25+3")  # 25 used twice
    assert not is_solution(numbers, target, "7*8")  # wrong value
    assert not is_solution(numbers, target, "7*8-3)")  # malformed


def test_countdown_accepts_any_correct_expression_not_only_gold():
    task = make_task("countdown", format="plain")
    p = task.problem([3, 7, 8, 25], 53, solve([3, 7, 8, 25], 53), 4)
    s = task.verify_batch([p, p, p], [p.answer, "8*7-3", "8*7-4"])
    assert s.exact.tolist() == [True, True, False]
    assert s.token_accuracy[1] == 1.0 and s.edit_distance[1] == 0.0


def test_countdown_only_solvable_and_solver_is_exact():
    task = make_task("countdown")
    for p in task.sample(np.random.default_rng(0), 100, "train", [3, 4, 5]):
        numbers, target = [int(x) for x in p.prompt.split(";")[0].split(",")], int(p.prompt.split(";")[1][:-1])
        assert is_solution(numbers, target, p.answer)
        assert target not in numbers
    assert solve([2, 3], 7) is None
    assert solve([2, 3, 5], 25) is not None  # (2+3)*5
    assert len(solve([2, 3, 5], 25)) == 2


def test_a_fresh_stream_skips_and_counts_examples_that_do_not_fit():
    # the countdown example that once crashed a supervised run mid-way was 66 tokens long
    task = make_task("countdown")
    spec = SplitSpec(train=(4, 4), extrapolate=(5, 5))
    stream = ProblemStream(task, spec, seed=0, train_size=None)
    fits = lambda p: len(p.prompt) + len(p.trace) + 2 <= 40  # noqa: E731  (rejects many)
    batch = stream.next(64, fits=fits)
    assert len(batch) == 64 and all(fits(p) for p in batch) and stream.too_long > 0
    again = ProblemStream(task, spec, seed=0, train_size=None)
    assert [p.prompt for p in again.next(64, fits=fits)] == [p.prompt for p in batch]  # still seeded
    again.load_state_dict(stream.state_dict())
    assert again.too_long == stream.too_long


@pytest.mark.parametrize("train_size", [None, 200])
def test_curriculum_opens_the_next_difficulty_once_the_top_one_is_learnt(train_size):
    task = make_task("addition")
    spec = SplitSpec(train=(1, 3), extrapolate=(4, 5))
    s = ProblemStream(task, spec, seed=0, train_size=train_size, curriculum=0.75, window=10)
    assert {p.difficulty for p in s.next(50)} == {1} and s.top == 1
    s.report(np.array([1] * 6 + [2] * 6), np.array([1.0] * 6 + [0.0] * 6))  # 6 at the top: no decision yet
    assert s.top == 1
    s.report(np.array([1] * 4), np.array([1.0, 1.0, 0.0, 0.0]))  # window closes at 8/10 = 0.8 >= 0.75
    assert s.top == 2 and {p.difficulty for p in s.next(60)} == {1, 2}
    s.report(np.array([2] * 10), np.full(10, 0.7))  # a window below the threshold keeps it closed
    assert s.top == 2
    state = s.state_dict()
    s.report(np.array([1] * 20 + [2] * 10), np.ones(30))  # only the top difficulty counts
    assert s.top == 3 and {p.difficulty for p in s.next(60)} == {1, 2, 3}
    s.report(np.array([3] * 50), np.ones(50))  # everything open: nothing left to do
    t = ProblemStream(task, spec, seed=0, train_size=train_size, curriculum=0.75, window=10)
    t.load_state_dict(state)
    assert t.top == 2


# -- the scratchpad step checker -----------------------------------------------------------------

STEP_TASKS = ("addition", "multiplication", "countdown")


@pytest.mark.parametrize("name", STEP_TASKS)
def test_every_gold_step_is_true_and_a_task_without_a_scratchpad_has_no_checker(name):
    task = make_task(name, format="scratchpad")
    rng = np.random.default_rng(0)
    problems = [
        task.make_problem(rng, d) for d in range(task.min_difficulty, task.min_difficulty + 3) for _ in range(50)
    ]
    labels = task.step_labels(problems, [p.trace for p in problems])
    assert all(len(y) == p.trace.split(">")[0].count(",") + 1 and y.all() for p, y in zip(problems, labels))
    scores = task.verify_batch(problems, [p.trace for p in problems], with_steps=True)
    assert scores.exact.all() and not scores.false_step.any()
    other = [f for f in task.formats if f != "scratchpad"][0]
    assert (
        make_task(name, format=other).verify_batch(problems[:1], [problems[0].answer], with_steps=True).false_step
        is None
    )
    with pytest.raises(ValueError, match="no step checker"):
        make_task(name, format=other, check_steps=True)


def test_countdown_step_drills_are_well_formed_steps_over_the_prompt_true_or_false_at_random():
    """A drill uses the problem's numbers (and its own results) until one is left, like a
    solver's scratchpad, with no answer; about half its steps are true, and what a drill is
    labelled is the checker's judgement. Drills read the prompt alone and are reproducible."""
    import re

    from emergent.envs.base import scratchpad_steps

    task = make_task("countdown", format="scratchpad")
    assert task.has_step_drills and not make_task("multiplication", format="scratchpad").has_step_drills
    assert not make_task("countdown", format="plain").has_step_drills
    problems = task.sample(np.random.default_rng(0), 200, "train", [3, 4])
    drills = [task.drill_steps(p, np.random.default_rng(i)) for i, p in enumerate(problems)]
    again = [task.drill_steps(p, np.random.default_rng(i)) for i, p in enumerate(problems)]
    assert drills == again
    labels = task.step_labels(problems, drills)
    for p, d, y in zip(problems, drills, labels):
        assert d.endswith(">") and len(scratchpad_steps(d)) == p.difficulty - 1 == len(y)
        assert all(re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)", s) for s in scratchpad_steps(d))
        first = re.fullmatch(r"(\d+)[-+*/](\d+)=\d+", scratchpad_steps(d)[0])
        numbers = [int(x) for x in p.prompt.split(";")[0].split(",")]
        assert int(first[1]) in numbers and int(first[2]) in numbers
    share = np.concatenate(labels).mean()
    assert 0.4 < share < 0.6, share  # true with probability 1/2, checked by the checker
    # a drill of the same numbers and target reads the same whatever the gold answer
    blind = [
        task.drill_steps(dataclasses.replace(p, answer="?", trace="?"), np.random.default_rng(i))
        for i, p in enumerate(problems)
    ]
    assert blind == drills


@pytest.mark.parametrize(
    "name,prompt,completion,labels",
    [
        # addition: the column digits, the carry out of the step before, the sum
        ("addition", "57+68=", "7+8+0=15,5+6+1=12>125", [1, 1]),
        ("addition", "57+68=", "7+8+0=14,5+6+1=12>125", [0, 1]),  # a wrong sum; its carry is still 1
        ("addition", "57+68=", "7+8+0=15,5+6+0=11>125", [1, 0]),  # the carry dropped
        ("addition", "57+68=", "7+8+0=5,5+6+0=11>125", [0, 1]),  # consistent with the false step before
        ("addition", "57+68=", "8+7+0=15,5+6+1=12>125", [0, 1]),  # the operands' digits swapped
        ("addition", "57+68=", "7+8+0=15,5+6+1=12,0+0+1=1>125", [1, 1, 0]),  # a column that does not exist
        ("addition", "57+68=", "7+8=15,5+6+1=12>125", [0, 1]),  # malformed
        ("addition", "57+68=", "125", []),  # no scratchpad at all
        # multiplication: the multiplicand times the next non-zero place value, in order
        ("multiplication", "123*405=", "123*5=615,123*400=49200>49815", [1, 1]),
        ("multiplication", "123*405=", "123*5=615,123*400=49100>49815", [1, 0]),
        ("multiplication", "123*405=", "123*400=49200,123*5=615>49815", [0, 0]),  # out of order
        ("multiplication", "123*405=", "123*5=615,123*0=0,123*400=49200>49815", [1, 0, 0]),  # a zero digit is skipped
        ("multiplication", "123*405=", "124*5=620,123*400=49200>49815", [0, 1]),
        # countdown: operands available (each used once), exact arithmetic
        ("countdown", "3,7,8,25;53=", "7*8=56,56-3=53>(7*8)-3", [1, 1]),
        ("countdown", "3,7,8,25;53=", "7*8=55,55-3=52,52+1=53>(7*8)-3", [0, 1, 0]),  # 1 was never made
        ("countdown", "3,7,8,25;53=", "7*7=49,49+3=52>(7*8)-3", [0, 1]),  # 7 used twice
        ("countdown", "3,7,8,25;53=", "7*8=56,56-3=53,56+3=59>(7*8)-3", [1, 1, 0]),  # 56 and 3 were consumed
        ("countdown", "4,6;3=", "6/4=1,6-4=2>6-4", [0, 0]),  # 6/4 is not 1; 6 and 4 were consumed by it
        ("countdown", "2,8;4=", "8/2=4>8/2", [1]),
        ("countdown", "2,8;4=", "8/0=4>8/2", [0]),
    ],
)
def test_steps_are_judged_one_by_one_given_the_steps_before(name, prompt, completion, labels):
    from emergent.envs import Problem

    task = make_task(name, format="scratchpad")
    problem = Problem(prompt=prompt, answer="", trace="", difficulty=2)
    assert task.step_labels([problem], [completion])[0].astype(int).tolist() == labels


def test_check_steps_rejects_a_right_answer_reached_through_a_false_step():
    from emergent.envs import Problem

    problem = Problem(prompt="3,7,8,25;53=", answer="(7*8)-3", trace="7*8=56,56-3=53>(7*8)-3", difficulty=4)
    sound, lucky, wrong = "7*8=56,56-3=53>(7*8)-3", "7*8=55,55-3=53>(7*8)-3", "7*8=56,56-3=53>7*8"
    for check in (False, True):
        task = make_task("countdown", format="scratchpad", check_steps=check)
        scores = task.verify_batch([problem] * 3, [sound, lucky, wrong], with_steps=True)
        assert scores.exact.tolist() == [True, not check, False]
        assert scores.false_step.tolist() == [False, True, False]  # flagged either way
        assert scores.token_accuracy[1] == 1.0  # the graded answer metrics judge the answer alone


def test_eval_reports_the_share_of_right_answers_with_a_false_step():
    from emergent.envs import Problem
    from emergent.platform.evaluate import summarise

    task = make_task("addition", format="scratchpad")
    problems = [Problem("57+68=", "125", "", 2)] * 3 + [Problem("5+6=", "11", "", 1)]
    completions = ["7+8+0=15,5+6+1=12>125", "7+8+0=14,5+6+1=12>125", "7+8+0=15,5+6+1=12>124", "5+6+0=10>11"]
    overall, by = summarise(problems, task.verify_batch(problems, completions, with_steps=True))
    assert overall["exact_match"] == 0.75 and overall["false_steps"] == pytest.approx(2 / 3)
    assert by[2]["false_steps"] == 0.5 and by[1]["false_steps"] == 1.0
    plain = make_task("addition", format="plain")
    assert (
        "false_steps" not in summarise(problems, plain.verify_batch(problems, ["125"] * 3 + ["11"], with_steps=True))[0]
    )
