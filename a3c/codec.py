"""Tensors to and from the wire: raw little-endian bytes with an explicit dtype and shape, never pickle."""

from __future__ import annotations

import math
import sys
from typing import Iterable, Sequence

import torch

from proto import a3c_pb2 as pb

if sys.byteorder != "little":  # torch serialises in native order; the contract says little-endian
    raise ImportError("a3c's tensor codec needs a little-endian machine")

TORCH_DTYPES: dict[int, torch.dtype] = {
    pb.FLOAT32: torch.float32,
    pb.FLOAT16: torch.float16,
    pb.BFLOAT16: torch.bfloat16,
    pb.FLOAT64: torch.float64,
    pb.INT64: torch.int64,
    pb.INT32: torch.int32,
    pb.UINT8: torch.uint8,
}
WIRE_DTYPES: dict[torch.dtype, int] = {v: k for k, v in TORCH_DTYPES.items()}
_BY_NAME = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CodecError(ValueError):
    """A received tensor is corrupt or does not match what was expected; `reason` is a short label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def torch_dtype(name: str) -> torch.dtype:
    return _BY_NAME[name]


def wire_dtype(name: str) -> int:
    return WIRE_DTYPES[_BY_NAME[name]]


def encode(name: str, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> pb.Tensor:
    """One tensor as a message; converted to `dtype` first when given. Handles any layout, even empty."""
    t = tensor.detach().to("cpu", dtype or tensor.dtype).contiguous()
    if t.dtype not in WIRE_DTYPES:
        raise CodecError("bad_dtype", f"{name}: dtype {t.dtype} has no wire encoding")
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return pb.Tensor(name=name, dtype=WIRE_DTYPES[t.dtype], shape=list(t.shape), data=data)


def decode(message: pb.Tensor) -> torch.Tensor:
    """A message back into a tensor that owns its memory; refuses unknown dtypes and wrong byte counts."""
    dtype = TORCH_DTYPES.get(message.dtype)
    if dtype is None:
        raise CodecError("bad_dtype", f"{message.name}: unknown dtype {message.dtype}")
    shape = tuple(message.shape)
    if any(d < 0 for d in shape):
        raise CodecError("bad_shape", f"{message.name}: negative dimension in shape {shape}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = math.prod(shape) * itemsize
    if len(message.data) != expected:
        raise CodecError("bad_size", f"{message.name}: {len(message.data)} bytes for shape {shape} "
                         f"of {dtype} (expected {expected})")
    if expected == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(message.data), dtype=dtype).reshape(shape)


def encode_all(named: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None) -> list[pb.Tensor]:
    return [encode(name, tensor, dtype) for name, tensor in named]


def decode_all(messages: Sequence[pb.Tensor], layout: Sequence[tuple[str, tuple[int, ...]]],
               allowed: Iterable[torch.dtype] = (torch.float32, torch.float16, torch.bfloat16),
               as_dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Decode a full set of tensors and check it against `layout` ((name, shape) pairs, in order)."""
    allowed = set(allowed)
    names = [m.name for m in messages]
    expected_names = [name for name, _ in layout]
    if names != expected_names:
        missing = [n for n in expected_names if n not in names]
        extra = [n for n in names if n not in expected_names]
        if missing:
            raise CodecError("missing_tensor", f"missing tensors: {', '.join(missing)}")
        if extra:
            raise CodecError("unknown_tensor", f"unexpected tensors: {', '.join(extra)}")
        raise CodecError("tensor_order", "tensors are not in the model's parameter order")
    out = []
    for message, (name, shape) in zip(messages, layout):
        tensor = decode(message)
        if tensor.dtype not in allowed:
            raise CodecError("bad_dtype", f"{name}: dtype {tensor.dtype} is not accepted here")
        if tuple(tensor.shape) != tuple(shape):
            raise CodecError("bad_shape", f"{name}: shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        out.append(tensor.to(as_dtype))
    return out
