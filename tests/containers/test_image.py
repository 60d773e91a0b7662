"""The image itself: who it runs as, what it carries, and how its layers cache."""

from __future__ import annotations

import time

import docker.errors
import pytest

from tests.containers.engine import IMAGE, build, copy_build_context
from tests.processes import ROOT

pytestmark = pytest.mark.containers


def run(engine, *command: str, entrypoint: str | None = None) -> str:
    return engine.containers.run(IMAGE, list(command), entrypoint=entrypoint, remove=True).decode()


def test_runs_as_uid_10001(engine, image):
    assert run(engine, "-u", entrypoint="id").strip() == "10001"


def test_both_c_extensions_load_and_are_used(engine, image):
    probe = ("import learner._rmsprop, a3c._wire; from learner.optimizers import fused_step_available; "
             "from a3c.codec import fast_conversions_available; "
             "print(fused_step_available(), fast_conversions_available())")
    assert run(engine, "-c", probe, entrypoint="python").split() == ["True", "True"]


def test_a3c_help_works(engine, image):
    out = run(engine, "--help")
    assert "learner" in out and "actor" in out and "train" in out


def test_the_build_fails_when_the_c_code_does_not_compile(engine, image, tmp_path):
    context = copy_build_context(tmp_path)
    (context / "learner" / "_rmsprop.c").write_text("#error this does not compile\n")
    with pytest.raises(docker.errors.BuildError) as failed:
        build(engine, context, tag=None)
    log = "".join(str(chunk.get("stream", "")) + str(chunk.get("error", "")) for chunk in failed.value.build_log)
    assert "No module named 'learner._rmsprop'" in log, log[-3000:]


def test_code_and_readme_edits_keep_the_dependency_layer(engine, image, tmp_path):
    context = copy_build_context(tmp_path)
    (context / "README.md").write_text((ROOT / "README.md").read_text() + "\nAn edit.\n")
    (context / "a3c" / "__init__.py").write_text((ROOT / "a3c" / "__init__.py").read_text() + "# an edit\n")
    original, _ = build(engine, ROOT, tag=None, target="deps")
    edited, _ = build(engine, context, tag=None, target="deps")
    assert edited == original


def test_a_container_stopped_while_it_starts_stops_at_once(engine, image):
    # Stopped before its service is up (importing torch, waiting for a learner that is not there): as PID 1 it
    # must still act on SIGTERM, not wait for the engine's SIGKILL after the grace period.
    container = engine.containers.run(IMAGE, ["actor", "--learner", "nowhere.invalid:50051"], detach=True)
    try:
        started = time.monotonic()
        container.stop(timeout=30)
        assert time.monotonic() - started < 10
        container.reload()
        assert container.attrs["State"]["ExitCode"] in (0, 143)
    finally:
        container.remove(force=True)
