"""Tensors to and from the wire: raw little-endian bytes with an explicit dtype and shape, never pickle."""

from __future__ import annotations

import math
import sys
import warnings
from typing import Iterable, Sequence

import torch

from a3c.int8 import Quantized, Wireable, quantize_gradients, to_int8_wire
from proto import a3c_pb2 as pb

try:  # one-pass conversions in C (a3c/_wire.c), built when the package is installed with a C compiler
    from a3c import _wire
except ImportError:
    _wire = None

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
    pb.INT8: torch.int8,
}
WIRE_DTYPES: dict[torch.dtype, int] = {v: k for k, v in TORCH_DTYPES.items()}
_BY_NAME = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}
_C_KINDS = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}  # the dtypes a3c/_wire.c converts
Layout = Sequence[tuple[str, tuple[int, ...]]]


class CodecError(ValueError):
    """A received tensor is corrupt or does not match what was expected; `reason` is a short label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def fast_conversions_available() -> bool:
    """Whether a3c/_wire.c was built: write_into and decode_flat then take one pass in C."""
    return _wire is not None


def split_views(flat: torch.Tensor, layout: Layout) -> list[torch.Tensor]:
    """A flat buffer of a model's size, as one view per parameter (in layout order)."""
    return [part.view(shape) for part, (_, shape) in zip(flat.split([math.prod(s) for _, s in layout]), layout)]


def torch_dtype(name: str) -> torch.dtype:
    return _BY_NAME[name]


def wire_dtype(name: str) -> int:
    return WIRE_DTYPES[_BY_NAME[name]]


def tensor_bytes(name: str, tensor: Wireable, dtype: torch.dtype | None) -> tuple[int, list[int], bytes, list[float]]:
    """(wire dtype, shape, little-endian bytes, scales) of a tensor, converted to `dtype` first when given:
    a float tensor asked for in int8 is quantized to the nearest values (see `to_int8_wire`)."""
    if dtype == torch.int8:
        tensor = to_int8_wire(tensor)
        dtype = None
    scales: list[float] = []
    if isinstance(tensor, Quantized):
        tensor, scales = tensor.values, tensor.scales.tolist()
    t = tensor.detach().to("cpu", dtype or tensor.dtype).contiguous()
    if t.dtype not in WIRE_DTYPES:
        raise CodecError("bad_dtype", f"{name}: dtype {t.dtype} has no wire encoding")
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return WIRE_DTYPES[t.dtype], list(t.shape), data, scales


def encode(name: str, tensor: Wireable, dtype: torch.dtype | None = None) -> pb.Tensor:
    """One tensor as a message; converted to `dtype` first when given. Handles any layout, even empty."""
    wire, shape, data, scales = tensor_bytes(name, tensor, dtype)
    return pb.Tensor(name=name, dtype=wire, shape=shape, data=data, scales=scales)


def write_into(flat: torch.Tensor, template: bytes, regions: list[tuple[int, int, int]], dtype: torch.dtype,
               prefix: bytes = b"") -> bytes | None:
    """`prefix` + `template` with each region (start and count in `flat`, byte offset in `template`) overwritten
    by those values of `flat` (contiguous float32) converted to `dtype`, in one pass of C; None where
    a3c/_wire.c is not built."""
    if _wire is None:
        return None
    return _wire.encode(flat.numpy(), template, regions, _C_KINDS[dtype], prefix)


C_DTYPES = tuple(_C_KINDS)  # the float dtypes write_into and decode_flat convert in C


def decode(message: pb.Tensor, as_dtype: torch.dtype | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """A message back into a tensor that owns its memory (converted to `as_dtype` when given), or written into
    `out` (contiguous, of the message's shape); refuses unknown dtypes and wrong byte counts."""
    dtype, shape, data = _checked_data(message)
    if message.scales:
        return _dequantize(message, data, shape, as_dtype, out)
    if not data:
        return torch.empty(shape, dtype=as_dtype or dtype) if out is None else out
    if out is not None:
        return out.copy_(_read_in_place(data, dtype, shape))
    if as_dtype is None or as_dtype == dtype:
        return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
    # The conversion makes the copy, so it can read the received bytes in place.
    return _read_in_place(data, dtype, shape).to(as_dtype)


def _checked_data(message: pb.Tensor) -> tuple[torch.dtype, tuple[int, ...], bytes]:
    """A message's dtype, shape and data bytes, refusing unknown dtypes, negative dimensions and wrong sizes."""
    dtype = TORCH_DTYPES.get(message.dtype)
    if dtype is None:
        raise CodecError("bad_dtype", f"{message.name}: unknown dtype {message.dtype}")
    shape = tuple(message.shape)
    if any(d < 0 for d in shape):
        raise CodecError("bad_shape", f"{message.name}: negative dimension in shape {shape}")
    expected = math.prod(shape) * dtype.itemsize
    data = message.data  # each read of a bytes field copies it out of the message: read it once
    if len(data) != expected:
        raise CodecError("bad_size", f"{message.name}: {len(data)} bytes for shape {shape} "
                         f"of {dtype} (expected {expected})")
    return dtype, shape, data


def _read_in_place(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A read-only tensor over received bytes, for a conversion or copy that makes the owned tensor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable": it is only read here
        return torch.frombuffer(data, dtype=dtype).reshape(shape)


def _dequantize(message: pb.Tensor, data: bytes, shape: tuple[int, ...], as_dtype: torch.dtype | None,
                out: torch.Tensor | None) -> torch.Tensor:
    """An INT8 tensor with scales as floats (float32 unless `as_dtype` says otherwise)."""
    count, numel = len(message.scales), math.prod(shape)
    if message.dtype != pb.INT8:
        raise CodecError("bad_scales", f"{message.name}: scales go only with int8 values")
    if count > numel or numel % count:
        raise CodecError("bad_scales", f"{message.name}: {count} scales do not split {numel} values evenly")
    scales = torch.tensor(message.scales, dtype=torch.float32)
    if not torch.isfinite(scales).all():
        raise CodecError("non_finite", f"{message.name}: a scale is NaN or Inf")
    return Quantized(_read_in_place(data, torch.int8, shape), scales).dequantize(as_dtype or torch.float32, out)


def gradients_for_wire(gradients: Iterable[Wireable], dtype: torch.dtype, max_norm: float) -> list[Wireable]:
    """Clipped gradients as the wire carries them: stochastically rounded on an int8 wire (see
    `int8.quantize_gradients`), otherwise converted to `dtype`."""
    if dtype == torch.int8:
        return quantize_gradients(gradients, max_norm)
    return [g.to(dtype) if isinstance(g, torch.Tensor) else g for g in gradients]


def encode_all(named: Iterable[tuple[str, Wireable]], dtype: torch.dtype | None = None) -> list[pb.Tensor]:
    return [encode(name, tensor, dtype) for name, tensor in named]


def decode_all(messages: Sequence[pb.Tensor], layout: Layout,
               allowed: Iterable[torch.dtype] = (torch.float32, torch.float16, torch.bfloat16, torch.int8),
               as_dtype: torch.dtype = torch.float32, into: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Decode a full set of tensors and check it against `layout` ((name, shape) pairs, in order); written into
    the tensors `into` (one per layout entry, of `as_dtype`) when given."""
    _check_set(messages, layout, allowed)
    return [decode(message, as_dtype, None if into is None else into[index]) for index, message in enumerate(messages)]


def decode_flat(messages: Sequence[pb.Tensor], layout: Layout, into: torch.Tensor,
                allowed: Iterable[torch.dtype] = (torch.float32, torch.float16, torch.bfloat16, torch.int8)) -> float:
    """Decode a full set of tensors, checked as `decode_all` checks them, into `into` (one flat contiguous float32
    buffer, layout order); returns the sum of their squares (NaN or Inf where a value is not finite, Inf also where
    the sum overflows). With a3c/_wire.c each float tensor takes one pass: converted and squared together."""
    _check_set(messages, layout, allowed)
    if _wire is None:
        for message, view in zip(messages, split_views(into, layout)):
            decode(message, torch.float32, view)
        return float(torch.linalg.vector_norm(into)) ** 2
    total, start, out = 0.0, 0, into.numpy()
    for message, (_, shape) in zip(messages, layout):
        count = math.prod(shape)
        kind = None if message.scales else _C_KINDS.get(TORCH_DTYPES.get(message.dtype))
        if kind is None:  # int8 with its scales, or a dtype decode refuses
            view = into[start:start + count].view(shape)
            total += float(torch.linalg.vector_norm(decode(message, torch.float32, view))) ** 2
        else:
            total += _wire.decode(out, start, _checked_data(message)[2], kind)
        start += count
    return total


def _check_set(messages: Sequence[pb.Tensor], layout: Layout, allowed: Iterable[torch.dtype]) -> None:
    """The tensors' names in layout order, each of an allowed dtype and of the layout's shape."""
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
    for message, (name, shape) in zip(messages, layout):
        dtype = TORCH_DTYPES.get(message.dtype)
        if dtype is not None and dtype not in allowed:
            raise CodecError("bad_dtype", f"{name}: dtype {dtype} is not accepted here")
        if tuple(message.shape) != tuple(shape):
            raise CodecError("bad_shape", f"{name}: shape {tuple(message.shape)}, expected {tuple(shape)}")
