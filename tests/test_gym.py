import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from emergent.envs import ENV_IDS, TASKS, TOKENIZER, TraceEnv, make_task


def test_every_task_is_registered():
    assert sorted(ENV_IDS) == sorted(f"emergent/{n.capitalize()}-v0" for n in TASKS)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def play(env: TraceEnv, completion: str, seed: int):
    obs, info = env.reset(seed=seed)
    total, steps = 0.0, 0
    for tok in list(TOKENIZER.encode(completion)) + [TOKENIZER.eos_id]:
        obs, reward, terminated, truncated, info = env.step(int(tok))
        total += reward
        steps += 1
        if terminated or truncated:
            break
    return env.problem, total, terminated, truncated, info


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("reward", ["exact", "token_accuracy"])
def test_env_reward_equals_batched_verifier(name, reward):
    env = TraceEnv(task=name, difficulty=(3, 4), max_len=128, reward=reward)
    task = make_task(name)
    rng = np.random.default_rng(0)
    problems, completions, rewards = [], [], []
    for seed in range(30):
        env.reset(seed=seed)
        gold = env.problem.trace
        # gold, a truncated gold, and random junk: right, graded-partial and wrong
        candidates = [gold, gold[: max(1, len(gold) // 2)], "".join(rng.choice(list("0123456789+,>"), size=5))]
        completion = candidates[seed % 3]
        problem, total, terminated, _, _ = play(env, completion, seed)
        assert terminated
        problems.append(problem)
        completions.append(completion)
        rewards.append(total)
    scores = task.verify_batch(problems, completions)
    expected = scores.exact.astype(float) if reward == "exact" else scores.token_accuracy
    np.testing.assert_allclose(rewards, expected)
    assert 0 < np.mean(scores.exact) < 1  # the comparison covered both outcomes


def test_episode_truncates_at_context_and_is_scored():
    env = TraceEnv(task="addition", difficulty=(1, 1), max_len=12)
    obs, _ = env.reset(seed=0)
    n = 0
    while True:
        obs, reward, terminated, truncated, info = env.step(3)  # "0" forever, never EOS
        n += 1
        if terminated or truncated:
            break
    assert truncated and not terminated and obs["length"] == 12
    assert info["exact"] is False and reward == 0.0


def test_observation_layout():
    env = TraceEnv(task="addition", difficulty=(2, 2), max_len=16)
    obs, info = env.reset(seed=3)
    n = obs["length"]
    assert obs["tokens"][0] == TOKENIZER.bos_id
    assert TOKENIZER.decode(obs["tokens"][1:n]) == info["prompt"]
    assert (obs["tokens"][n:] == TOKENIZER.pad_id).all()


def test_bad_env_arguments():
    with pytest.raises(ValueError, match="unknown task"):
        TraceEnv(task="chess")
    with pytest.raises(ValueError, match="reward"):
        TraceEnv(reward="vibes")
