"""8-bit floats for the wire: int8 values with a float32 scale per row, a quarter of float32's bytes.

Parameters are rounded to the nearest value; gradients stochastically, so that their expected value is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass
class Quantized:
    """A float tensor in 8 bits: `values * scale` of its block, one block per row (a matrix's row, a filter
    bank's filter), or one for a vector. Per-row scales keep a row of small weights from rounding to zero
    beside a row of large ones."""

    values: torch.Tensor  # int8, the tensor's shape
    scales: torch.Tensor  # float32, one per block

    def dequantize(self, dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
        """The floats, in a new tensor or written into `out` (contiguous, of the same shape)."""
        out = torch.empty(self.values.shape, dtype=dtype) if out is None else out
        if self.values.numel():
            blocks = out.view(self.scales.numel(), -1)
            blocks.copy_(self.values.reshape(blocks.shape)).mul_(self.scales[:, None])
        return out

    def squared_norm(self) -> float:
        per_block = self.values.reshape(self.scales.numel(), -1).float().square().sum(dim=1)
        return float((per_block * self.scales.double().square()).sum()) if self.values.numel() else 0.0


Wireable = torch.Tensor | Quantized


def quantize(tensor: torch.Tensor, stochastic: bool = False, generator: torch.Generator | None = None) -> Quantized:
    """8-bit values and per-row scales for a float tensor. Stochastic rounding (round up with probability equal
    to the fraction) makes the expected value exact, so a small component of many gradients still adds up
    instead of always rounding to zero; the nearest value suits parameters, which are sent whole each time."""
    x = tensor.detach().to("cpu", torch.float32)
    if not x.numel():
        return Quantized(torch.empty(x.shape, dtype=torch.int8), torch.empty(0))
    rows = x.reshape(x.shape[0] if x.dim() >= 2 else 1, -1)
    scales = rows.abs().amax(dim=1) / 127
    y = rows / torch.where(scales > 0, scales, 1.0)[:, None]
    if stochastic:
        y = y.add_(_uniform_noise(y.numel(), generator).view(y.shape)).floor_()
    else:
        y = y.round_()
    return Quantized(y.clamp_(-127, 127).to(torch.int8).reshape(x.shape), scales)


_NOISE_OFFSETS = 1 << 16
_noise = torch.empty(0)


def _uniform_noise(numel: int, generator: torch.Generator | None) -> torch.Tensor:
    """`numel` values uniform in [0, 1): a window at a random one of 65,536 offsets into one fixed random buffer.
    Fresh noise per value cost seven times the rest of the rounding (3.5 against 0.5 ms for Pong's largest
    layer); each value still gets a new draw each push, from the 65,536 the offsets give it."""
    global _noise
    if _noise.numel() < numel + _NOISE_OFFSETS:
        _noise = torch.rand(numel + _NOISE_OFFSETS, generator=generator)
    offset = int(torch.randint(_NOISE_OFFSETS, (), generator=generator))
    return _noise[offset:offset + numel]


# Smaller tensors (biases, output heads) travel as float16 even on an int8 wire: a sliver of the bytes, and each
# quantized tensor has a fixed cost to round and to decode.
QUANTIZE_MIN_VALUES = 4096


def to_int8_wire(tensor: Wireable, stochastic: bool = False, generator: torch.Generator | None = None) -> Wireable:
    """What an int8 wire carries for this tensor: itself if already quantized, quantized if large, else float16."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        return tensor
    if tensor.numel() >= QUANTIZE_MIN_VALUES:
        return quantize(tensor, stochastic, generator)
    return tensor.detach().to("cpu", torch.float16)


def _squared_norm(tensor: Wireable) -> float:
    return tensor.squared_norm() if isinstance(tensor, Quantized) else float(tensor.float().square().sum())


def quantize_gradients(gradients: Iterable[Wireable], max_norm: float,
                       generator: torch.Generator | None = None) -> list[Wireable]:
    """Gradients (already clipped to `max_norm`) for an int8 wire, stochastically rounded. Rounding can lift the
    norm a little past the clip, which the learner refuses: then every tensor shrinks by the same factor to bring
    it back, a direction-preserving rescale like the clip itself."""
    wire = [to_int8_wire(g, stochastic=True, generator=generator) for g in gradients]
    norm = math.sqrt(sum(map(_squared_norm, wire)))
    if norm > max_norm:  # new tensors: what was passed in, quantized or not, stays as it was
        shrink = max_norm / norm
        wire = [Quantized(t.values, t.scales * shrink) if isinstance(t, Quantized) else t * shrink for t in wire]
    return wire
