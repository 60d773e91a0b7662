"""The environment batches an actor steps: both backends give the network the same kind of frames, restart
finished episodes themselves, and keep the last frame of an episode a time limit cut."""

import numpy as np
import pytest

from a3c.envs import AleVectorBatch, EnvError, GymnasiumBatch, describe_env, make_env_batch

PONG = "PongNoFrameskip-v4"


def play(batch, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    obs = batch.reset()
    ended, cut, total = 0, 0, 0.0
    for _ in range(steps):
        step = batch.step(rng.integers(0, 6, size=len(obs)))
        assert step.obs.shape == obs.shape and step.obs.dtype == obs.dtype
        assert step.rewards.dtype == np.float32 and set(np.unique(step.rewards)) <= {-1.0, 0.0, 1.0}
        ended += int((step.terminated | step.truncated).sum())
        cut += len(step.truncated_obs)
        total += float(step.rewards.sum())
        for i, last in step.truncated_obs.items():
            assert step.truncated[i] and not step.terminated[i] and last.shape == obs.shape[1:]
        obs = step.obs
    return obs, ended, cut, total


@pytest.mark.parametrize("backend", ["ale-vector", "gymnasium"])
def test_both_backends_give_stacked_84x84_gray_frames(backend):
    batch = make_env_batch(PONG, 3, seed=5, backend=backend)
    assert isinstance(batch, AleVectorBatch if backend == "ale-vector" else GymnasiumBatch)
    info = describe_env(PONG)
    obs, _, _, total = play(batch, 200)
    assert obs.shape == (3, *info.obs_shape) == (3, 4, 84, 84) and obs.dtype == np.uint8
    assert 0 < obs.mean() < 255 and total < 0  # a random player concedes points
    batch.close()


def test_backends_see_the_same_game():
    """Same preprocessing: after 40 no-op steps both backends show (nearly) the same screen."""
    frames = []
    for backend in ("ale-vector", "gymnasium"):
        batch = make_env_batch(PONG, 1, seed=0, backend=backend)
        batch.reset()
        for _ in range(40):
            obs = batch.step(np.zeros(1, np.int64)).obs
        frames.append(obs[0, -1].astype(np.float32))
        batch.close()
    # Random no-op starts differ, but the court, the scores and the paddles' columns are the same picture.
    assert abs(frames[0].mean() - frames[1].mean()) < 3
    assert np.mean(np.abs(frames[0] - frames[1]) > 30) < 0.05


def test_ale_vector_restarts_an_episode_cut_by_the_time_limit_and_keeps_its_last_frame():
    batch = AleVectorBatch(PONG, 2, seed=1, max_frames=400)
    _, ended, cut, _ = play(batch, 150)
    assert ended >= 2 and cut == ended  # 400 frames is 100 agent steps: a cut, never a finished game
    batch.close()


def test_gymnasium_batch_restarts_finished_episodes():
    batch = make_env_batch("CartPole-v1", 4, seed=2)
    assert isinstance(batch, GymnasiumBatch)
    rng = np.random.default_rng(0)
    obs, ended, previous = batch.reset(), 0, np.zeros(4, bool)
    for _ in range(60):
        step = batch.step(rng.integers(0, 2, size=4))
        # An env whose episode ended hands back the first observation of a new one (CartPole starts within 0.05
        # of upright and still), and does not end again on the very next step.
        assert (np.abs(step.obs[step.terminated]) <= 0.05).all() and not (step.terminated & previous).any()
        ended, previous = ended + int(step.terminated.sum()), step.terminated
    assert ended >= 4 and step.obs.shape == obs.shape and step.obs.dtype == np.float32
    batch.close()


def test_ale_vector_backend_refuses_other_environments():
    with pytest.raises(EnvError, match="ALE games only"):
        make_env_batch("CartPole-v1", 2, seed=0, backend="ale-vector")
