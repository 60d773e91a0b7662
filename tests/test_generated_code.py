"""The generated gRPC modules are exactly what `make proto` makes from proto/a3c.proto today."""

from pathlib import Path

from proto.generate import GENERATED, ROOT, generate


def test_generated_modules_are_up_to_date(tmp_path: Path):
    fresh = generate(tmp_path)
    for path in fresh:
        committed = ROOT / "proto" / path.name
        assert committed.read_text() == path.read_text(), (
            f"proto/{path.name} is stale: run `make proto` and commit the result")
    assert sorted(p.name for p in fresh) == sorted(GENERATED)
