"""The short chaos run (`make test-chaos`, which CI runs after `make test`; `make chaos` is the long one): CartPole
trained to 195 while actors are SIGKILLed, scaled 2 -> 8 -> 2, the learner SIGKILLed mid-run and during a
checkpoint write, and one actor's link slowed and lossy (where the machine lets it: root, iproute2, iptables)."""

import pytest

from bench.chaos import invariants, run

pytestmark = pytest.mark.chaos


def test_training_survives_a_run_full_of_faults_and_every_push_is_accounted_for(tmp_path):
    chaos = run("CartPole-v1", 195.0, seed=0, seconds=40, faults=True, link="50mbit 0.02", checkpoint_interval=3,
                workdir=tmp_path / "chaos")
    verdict = invariants(chaos)
    print(verdict, chaos["ledger"], *chaos["events"], sep="\n")
    failed = [name for name, value in verdict.items() if value is False]
    assert not failed, (failed, verdict, chaos["ledger"], chaos["events"])
