"""Regenerate the Python modules for proto/a3c.proto: `python -m proto.generate` (or `make proto`)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "proto/a3c.proto"
GENERATED = ("a3c_pb2.py", "a3c_pb2.pyi", "a3c_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on the contract, writing the generated modules under out_dir/proto/."""
    from grpc_tools import protoc

    (out_dir / "proto").mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", str(ROOT / PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return [out_dir / "proto" / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate(ROOT):
        print(f"wrote {path.relative_to(ROOT)}")
    sys.exit(0)
