"""The short chaos run under the real engine: the compose stack (CartPole) trains to 195 while actor containers'
processes are SIGKILLed and the engine restarts them, compose scales the actors 2 -> 8 -> 2, the learner's process
is SIGKILLed mid-run and during a checkpoint write, and one actor container's link is slowed and lossy."""

from functools import partial

import pytest

from bench.chaos import invariants, run
from tests.containers.chaos import ComposeFleet
from tests.containers.engine import REPORT

pytestmark = pytest.mark.containers


def test_the_compose_stack_trains_through_a_run_full_of_faults(engine, image, tmp_path):
    chaos = run("CartPole-v1", 195.0, seed=0, seconds=90, faults=True, link="50mbit 0.02", checkpoint_interval=3,
                workdir=tmp_path / "chaos", fleet_kind=partial(ComposeFleet, engine))
    verdict = invariants(chaos)
    print(verdict, chaos["ledger"], *chaos["events"], sep="\n")
    failed = [name for name, value in verdict.items() if value is False]
    assert not failed, (failed, verdict, chaos["ledger"], chaos["events"])
    REPORT["chaos in compose"] = (f"195 reached in {chaos['seconds_to_target']:.0f} s, slow link "
                                  f"{chaos['slow_link']}, ledger {chaos['ledger']}")
