"""The image and the compose stack under a real Docker engine (`make test-containers`; not in `make test`)."""

from __future__ import annotations

import pytest

from tests.containers.engine import DOCKERFILE, IMAGE, REPORT, build, client
from tests.deployment import compose


@pytest.fixture(scope="session")
def engine():
    engine = client()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def image(engine) -> str:
    """deploy/Dockerfile built from this checkout, as the compose file's `build:` builds it and tagged as it runs it."""
    recipe = compose()["x-a3c"]["build"]
    assert (recipe["context"], recipe["dockerfile"]) == (".", DOCKERFILE)
    image_id, seconds = build(engine)
    size = engine.images.get(image_id).attrs["Size"]
    REPORT["image"] = f"{IMAGE} {size / 1e9:.2f} GB, built in {seconds:.0f} s (cached layers reused)"
    return image_id


def pytest_terminal_summary(terminalreporter) -> None:
    if REPORT:
        terminalreporter.section("containers: measured")
        for key, value in REPORT.items():
            terminalreporter.write_line(f"{key}: {value}")
