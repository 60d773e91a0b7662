"""Whole messages as bytes: the one place that writes protobuf fields by hand.

Gradients and parameters are the bulk of every message, so they travel as `repeated Tensor` fields written
straight after the message's head, never copied into and back out of message objects (for a 2.7 MB model that
copying cost the learner more than its optimizer step). The bytes are those protobuf itself would write (parsers
accept fields in any order): the head's SerializeToString() joined with the field parses as the whole message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from a3c import codec
from a3c.codec import Layout, split_views
from a3c.int8 import Wireable
from proto import a3c_pb2 as pb

_DATA_FIELD = pb.Tensor.DESCRIPTOR.fields_by_name["data"].number
_PARAMS_TENSORS_FIELD = pb.Params.DESCRIPTOR.fields_by_name["tensors"].number
_REPLY_PARAMS_FIELD = pb.PushGradientsResponse.DESCRIPTOR.fields_by_name["params"].number
_PUSH_GRADIENTS_FIELD = pb.PushGradientsRequest.DESCRIPTOR.fields_by_name["gradients"].number


@dataclass(frozen=True)
class Push:
    """One rollout's contribution, from the actor's gradient to the learner's request."""

    seq: int
    base_version: int
    gradients: Sequence[tuple[str, Wireable]]  # (parameter name, gradient) in the model's layout order
    env_frames: int
    agent_steps: int
    episode_returns: Sequence[float]
    loss: pb.LossStats
    want_params: bool = True  # the reply carries the parameters of the version this push made


def push_request(actor_id: str, push: Push, wire_dtype: torch.dtype, max_grad_norm: float) -> bytes:
    """A serialized PushGradientsRequest: the gradients in the run's wire dtype (stochastically rounded on an int8
    wire, see `codec.gradients_for_wire`), encoded once."""
    head = pb.PushGradientsRequest(
        actor_id=actor_id, seq=push.seq, base_version=push.base_version, env_frames=push.env_frames,
        agent_steps=push.agent_steps, episode_returns=push.episode_returns, loss=push.loss,
        want_params=push.want_params)
    names = [name for name, _ in push.gradients]
    wire = codec.gradients_for_wire([gradient for _, gradient in push.gradients], wire_dtype, max_grad_norm)
    return b"".join([head.SerializeToString(), *encode_field(_PUSH_GRADIENTS_FIELD, zip(names, wire))])


def push_reply(version: int, params: bytes | None = None) -> bytes:
    """A serialized PushGradientsResponse, carrying a serialized `Params` when given."""
    head = pb.PushGradientsResponse(version=version).SerializeToString()
    return head if params is None else b"".join([head, *embed(_REPLY_PARAMS_FIELD, [params])])


class ParamsEncoder:
    """Parameters (one flat float32 buffer, layout order) as a serialized `Params` message, or as the
    `PushGradientsResponse` that carries them, each in one bytes object."""

    def __init__(self, layout: Layout, wire_dtype: torch.dtype) -> None:
        self.layout, self.wire_dtype = list(layout), wire_dtype
        # Float dtypes in one pass, written after the message's head; int8 quantizes per tensor.
        self.field = FlatField(_PARAMS_TENSORS_FIELD, layout, wire_dtype) if wire_dtype.is_floating_point else None

    def params(self, version: int, flat: torch.Tensor) -> bytes:
        return self._append_tensors(pb.Params(version=version).SerializeToString(), flat)

    def push_reply(self, version: int, flat: torch.Tensor) -> bytes:
        """The reply to a push that made `version`, with the parameters of that version."""
        if self.field is None:
            return push_reply(version, self.params(version, flat))
        head = pb.Params(version=version).SerializeToString()
        size = len(head) + len(self.field.template)
        return self._append_tensors(b"".join([push_reply(version), tag_and_length(_REPLY_PARAMS_FIELD, size), head]),
                                    flat)

    def _append_tensors(self, head: bytes, flat: torch.Tensor) -> bytes:
        if self.field is not None:
            return self.field.encode(flat, head)
        return encode_flat_field(_PARAMS_TENSORS_FIELD, self.layout, flat, self.wire_dtype, head)


def tag_and_length(field_number: int, length: int) -> bytes:
    """The key and length prefix of a length-delimited protobuf field (wire type 2)."""
    out = bytearray()
    for value in ((field_number << 3) | 2, length):
        while value > 0x7F:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


def embed(field_number: int, pieces: list[bytes]) -> list[bytes]:
    """A length-delimited field whose payload is the concatenation of `pieces` (a sub-message), as pieces."""
    return [tag_and_length(field_number, sum(map(len, pieces))), *pieces]


def encode_field(field_number: int, named: Iterable[tuple[str, Wireable]],
                 dtype: torch.dtype | None = None) -> list[bytes]:
    """A `repeated Tensor` field as serialized pieces, to be joined once after the rest of a message."""
    pieces: list[bytes] = []
    for name, tensor in named:
        pieces += _tensor_pieces(field_number, name, *codec.tensor_bytes(name, tensor, dtype))
    return pieces


def _tensor_pieces(field_number: int, name: str, wire: int, shape: list[int], data: bytes,
                   scales: list[float]) -> list[bytes]:
    """One element of a `repeated Tensor` field; its data, when there is any, is the last piece."""
    head = pb.Tensor(name=name, dtype=wire, shape=shape, scales=scales).SerializeToString()
    body = [head, tag_and_length(_DATA_FIELD, len(data)), data] if data else [head]  # proto3 omits b""
    return embed(field_number, body)


def encode_flat_field(field_number: int, layout: Layout, flat: torch.Tensor, dtype: torch.dtype | None,
                      prefix: bytes = b"") -> bytes:
    """`encode_field` of the parts of one flat buffer (`layout` order), joined after `prefix`: torch's passes, for
    any wire dtype (FlatField's one pass in C takes the float ones)."""
    named = zip((name for name, _ in layout), split_views(flat.detach(), layout))
    return b"".join([prefix, *encode_field(field_number, named, dtype)])


class FlatField:
    """A `repeated Tensor` field of the parts of one flat float32 buffer (`layout` order) in one float wire dtype,
    serialized as one bytes object: the bytes `encode_field` writes for the same tensors. With a3c/_wire.c the
    values are converted straight into a template of the field; without it, torch converts and the pieces are
    joined."""

    def __init__(self, field_number: int, layout: Layout, dtype: torch.dtype) -> None:
        if dtype not in codec.C_DTYPES:
            raise ValueError(f"FlatField carries float32, float16 or bfloat16, not {dtype}")
        self.field_number, self.layout, self.dtype = field_number, list(layout), dtype
        template, self.regions, start = [], [], 0
        for name, shape in self.layout:
            count = math.prod(shape)
            data = bytes(count * dtype.itemsize)
            pieces = _tensor_pieces(field_number, name, codec.WIRE_DTYPES[dtype], list(shape), data, [])
            offset = sum(map(len, template)) + sum(map(len, pieces[:-1]))
            if data:
                self.regions.append((start, count, offset))
            template += pieces
            start += count
        self.num_values = start
        self.template = b"".join(template)

    def encode(self, flat: torch.Tensor, prefix: bytes = b"") -> bytes:
        """The field's bytes, after `prefix` (the start of the message, say) in the same bytes object."""
        flat = flat.detach()
        if flat.dtype != torch.float32 or flat.numel() != self.num_values or not flat.is_contiguous():
            raise ValueError(f"expected a contiguous float32 buffer of {self.num_values} values")
        written = codec.write_into(flat, self.template, self.regions, self.dtype, prefix)
        if written is None:
            return encode_flat_field(self.field_number, self.layout, flat, self.dtype, prefix)
        return written
