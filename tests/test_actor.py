"""The actor loop against a real learner, and the parts of its gradient computation that are easy to get wrong."""

import threading
import time

import numpy as np
import pytest
import torch

from a3c import codec
from a3c.config import ActorConfig
from a3c.model import ModelSpec, build_model
from a3c.envs import describe_env
from a3c.losses import a3c_loss
from actor.gradients import compute_gradients, rollout_returns
from actor.rollout import Rollout, VectorRollout
from actor.service import Actor


@pytest.mark.parametrize("overlap_pushes", [False, True])
def test_actor_pushes_and_follows_the_learner(learner, overlap_pushes):
    stop = threading.Event()
    actor = Actor(ActorConfig(learner=f"127.0.0.1:{learner.port}", num_envs=2, connect_timeout=10,
                              metrics_port=0, overlap_pushes=overlap_pushes), stop)
    thread = threading.Thread(target=actor.run)
    thread.start()
    deadline = time.monotonic() + 30
    while learner.model.version < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert learner.model.version >= 20
    assert actor.metrics.pushes_accepted == learner.stats.updates == learner.model.version
    assert actor.metrics.frames_counted == learner.stats.env_frames
    # Alone, an actor's gradients are fresh; overlapping, each is one push behind (the first one excepted).
    lag = (actor.metrics.registry.get_sample_value("a3c_actor_policy_lag_sum")
           / actor.metrics.registry.get_sample_value("a3c_actor_policy_lag_count"))
    assert lag == (pytest.approx(1 - 1 / learner.model.version) if overlap_pushes else 0)
    # The actor's network equals the version it last received, as rounded to the wire dtype.
    assert actor.version == learner.model.version
    wire = codec.TORCH_DTYPES[actor.spec.wire_dtype]
    for mine, theirs in zip(actor.model.parameters(), learner.model.params):
        assert torch.equal(mine, theirs.detach().to(wire).float())


def constant_value_model(value: float):
    model = build_model(ModelSpec("mlp", (4,), 2))
    with torch.no_grad():
        model.value.weight.zero_()
        model.value.bias.fill_(value)
    return model


def test_time_limit_bootstraps_from_final_state_but_termination_does_not():
    model = constant_value_model(10.0)
    obs = np.zeros((3, 2, 4), dtype=np.float32)
    rollout = Rollout(obs=obs, actions=np.zeros((2, 2), dtype=np.int64),
                      rewards=np.ones((2, 2), dtype=np.float32), dones=np.array([[1, 1], [0, 0]], np.float32),
                      truncated=[(0, 1, np.zeros(4, np.float32))])
    returns = rollout_returns(model, rollout, gamma=0.5, clip_rewards=False)
    # env 0 terminated at t=0: R = 1; env 1 was cut by a time limit at t=0: R = 1 + 0.5 * V = 6.
    assert returns[0].tolist() == [1.0, 6.0]
    assert returns[1].tolist() == [1.0 + 0.5 * 10, 1.0 + 0.5 * 10]


def test_rewards_are_clipped_to_their_sign_when_asked():
    model = constant_value_model(0.0)
    rollout = Rollout(obs=np.zeros((2, 1, 4), np.float32), actions=np.zeros((1, 1), np.int64),
                      rewards=np.array([[7.0]], np.float32), dones=np.array([[1.0]], np.float32))
    assert rollout_returns(model, rollout, 0.9, clip_rewards=True).item() == 1.0
    assert rollout_returns(model, rollout, 0.9, clip_rewards=False).item() == 7.0


def test_vector_rollout_reports_each_finished_episode_with_its_return():
    rollout = VectorRollout("CartPole-v1", num_envs=4, t_max=50, seed=3)
    torch.manual_seed(0)  # the actions a fresh network samples: unseeded, some runs finished only 3 episodes
    model = build_model(ModelSpec("mlp", (4,), 2))
    batch = rollout.collect(model)
    rollout.close()
    assert batch.obs.shape == (51, 4, 4) and batch.actions.shape == (50, 4)
    # The returns of the episodes that ended, summed here from the rollout's own rewards and ends.
    expected, running = [], np.zeros(4)
    for rewards, dones in zip(batch.rewards, batch.dones):
        running += rewards
        expected += list(running[dones == 1])
        running[dones == 1] = 0
    assert len(expected) >= 4  # a random CartPole policy falls within 50 steps
    assert sorted(batch.episode_returns) == sorted(expected)


@pytest.mark.parametrize("env_id", ["PongNoFrameskip-v4", "CartPole-v1"])
def test_rollout_gradient_equals_the_loss_recomputed_from_scratch(env_id):
    # The rollout keeps the convolutions' graph and runs the dense layers again over all steps at once; the
    # gradient must be the one a plain forward pass over the same observations and actions gives.
    torch.manual_seed(0)
    model = build_model(ModelSpec.for_env(describe_env(env_id), center_frames=True))
    rollout = VectorRollout(env_id, num_envs=3, t_max=4, seed=1)
    batch = rollout.collect(model)
    rollout.close()
    result = compute_gradients(model, batch, 0.99, 0.01, 0.5, max_grad_norm=1e9, clip_rewards=True)
    got = [g.clone() for g in result.gradients]
    returns = rollout_returns(model, batch, 0.99, clip_rewards=True)
    logits, values = model(torch.from_numpy(batch.obs[:-1].reshape(-1, *batch.obs.shape[2:])))
    model.zero_grad(set_to_none=True)
    a3c_loss(logits, values, torch.from_numpy(batch.actions.reshape(-1)), returns.reshape(-1), 0.01, 0.5).total.backward()
    for (name, _), mine, reference in zip(model.named_parameters(), got, (p.grad for p in model.parameters())):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-6, msg=name)


def first_rollout(actor: Actor) -> Rollout:
    """The actor's first rollout, set up by the actor itself against the learner (all start from version 0)."""
    try:
        assert actor._setup()
        return actor.rollout.collect(actor.model)
    finally:
        actor.close()


def test_replicas_without_a_seed_play_different_episodes_and_a_named_one_repeats_its_own(learner):
    a, b, a_again = (Actor(ActorConfig(learner=f"127.0.0.1:{learner.port}", actor_id=name, num_envs=2,
                                       connect_timeout=10, metrics_port=0))
                     for name in ("replica-a", "replica-b", "replica-a"))
    assert a.seed == a_again.seed != b.seed
    assert "derived from the name replica-a" in a.seed_source
    first_a, first_b = first_rollout(a), first_rollout(b)
    # Different environments (their first observations) and different sampled actions.
    assert not np.array_equal(first_a.obs[0], first_b.obs[0]) and not np.array_equal(first_a.actions, first_b.actions)
    again = first_rollout(a_again)
    assert np.array_equal(again.obs, first_a.obs) and np.array_equal(again.actions, first_a.actions)
    assert Actor(ActorConfig(actor_id="replica-a", seed=7, metrics_port=0)).seed == 7
