"""A noisy actor is refused outright for a while; the others train on."""

import grpc
import pytest

from learner.refusal_budget import MAX_TRACKED, WINDOW_SECONDS, RefusalBudget
from proto import a3c_pb2_grpc as pb_grpc
from tests.conftest import expect_rejections, sound_push
from tests.processes import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_refusal_over_the_limit_starts_a_cool_down_that_ends():
    clock = Clock()
    budget = RefusalBudget(limit=3, cooldown=30.0, clock=clock)
    assert not any(budget.refused("noisy/a1b2c3") for _ in range(3))
    assert budget.cooling("noisy/a1b2c3") == 0
    assert budget.refused("noisy/d4e5f6")  # the same actor, restarted: still the same budget
    assert budget.cooling("noisy/ffffff") == 30.0 and budget.cooling_count() == 1
    assert budget.cooling("quiet/000000") == 0
    clock.now += 30.0
    assert budget.cooling("noisy/a1b2c3") == 0 and budget.cooling_count() == 0


def test_refusals_spread_wider_than_the_window_never_add_up():
    clock = Clock()
    budget = RefusalBudget(limit=2, cooldown=30.0, clock=clock)
    for _ in range(10):
        budget.refused("slow")
        clock.now += WINDOW_SECONDS / 2 + 1
    assert budget.cooling("slow") == 0


def test_made_up_names_cannot_grow_memory_and_a_zero_limit_never_cools():
    budget = RefusalBudget(limit=1, cooldown=30.0)
    for index in range(MAX_TRACKED + 500):
        budget.refused(f"name-{index}")
    assert len(budget._refusals) == MAX_TRACKED
    off = RefusalBudget(limit=0, cooldown=30.0)
    for _ in range(100):
        off.refused("noisy")
    assert off.cooling("noisy") == 0


@pytest.mark.parametrize("frontends", [0, 2])
def test_a_noisy_actor_is_cooled_down_while_another_trains_on(start_learner, frontends):
    learner = start_learner(refusal_limit=2, refusal_cooldown=2.0, frontends=frontends)

    def cooling() -> float:
        return learner.registry.get_sample_value("a3c_learner_actors_cooling_down")

    with grpc.insecure_channel(f"127.0.0.1:{learner.port}") as channel:
        stub = pb_grpc.LearnerStub(channel)
        for seq in range(1, 4):  # invalid: a return no CartPole episode can have
            with pytest.raises(grpc.RpcError) as err:
                stub.PushGradients(sound_push(learner, actor_id="noisy/1", seq=seq, episode_returns=[1e6]), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        wait_for(lambda: cooling() == 1, 10, "the cool-down")  # fronts report their refusals through a pipe
        with pytest.raises(grpc.RpcError) as err:  # now even a sound push is refused, at once
            stub.PushGradients(sound_push(learner, actor_id="noisy/1", seq=4), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "cooling_down" in err.value.details()
        assert stub.PushGradients(sound_push(learner, actor_id="quiet/1", seq=1), timeout=10).version == 1
        expect_rejections(learner, {"bad_returns": 3, "cooling_down": 1})
        # After the cool-down the noisy actor is heard again.
        reply = wait_for(lambda: stub.PushGradients(sound_push(learner, actor_id="noisy/1", seq=5, base_version=1),
                                                    timeout=10), 10, "the cool-down to end")
        assert reply.version == 2 and cooling() == 0
