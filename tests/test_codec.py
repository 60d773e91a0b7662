"""The tensor codec: exact round trips for every dtype and layout, and refusal of anything malformed."""

import math
import os
import warnings

import pytest
import torch

from a3c import codec, framing
from proto import a3c_pb2 as pb

ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8,
              torch.int8]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_round_trip_every_dtype(dtype):
    source = (torch.randn(3, 5) * 100).to(dtype)
    message = codec.encode("w", source)
    assert message.dtype == codec.WIRE_DTYPES[dtype]
    assert list(message.shape) == [3, 5]
    decoded = codec.decode(message)
    assert decoded.dtype == dtype
    assert torch.equal(decoded, source)


def test_bytes_are_little_endian_c_order():
    message = codec.encode("w", torch.tensor([[1, 2], [3, 256]], dtype=torch.int32))
    assert message.data == bytes([1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 1, 0, 0])


def test_non_contiguous_tensor_round_trips_by_value():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    view = base.t()[1:, ::2]
    assert not view.is_contiguous()
    assert torch.equal(codec.decode(codec.encode("v", view)), view)


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 5)])
def test_empty_tensor_round_trips(shape):
    decoded = codec.decode(codec.encode("e", torch.empty(shape)))
    assert decoded.shape == shape


def test_scalar_round_trips():
    decoded = codec.decode(codec.encode("s", torch.tensor(2.5)))
    assert decoded.shape == () and decoded.item() == 2.5


def test_conversion_to_wire_dtype():
    source = torch.tensor([1.0, 0.5, -2.0])
    message = codec.encode("w", source, torch.float16)
    assert message.dtype == pb.FLOAT16 and len(message.data) == 6
    assert torch.equal(codec.decode(message).float(), source)


def test_decoded_tensor_owns_writable_memory():
    message = codec.encode("w", torch.ones(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a tensor would alias the received, read-only bytes
        decoded = codec.decode(message)
    decoded += 1
    assert torch.equal(decoded, torch.full((4,), 2.0))


@pytest.mark.parametrize("data", [b"", b"\x00" * 15, b"\x00" * 17])
def test_wrong_byte_count_is_refused(data):
    message = pb.Tensor(name="w", dtype=pb.FLOAT32, shape=[2, 2], data=data)
    with pytest.raises(codec.CodecError) as err:
        codec.decode(message)
    assert err.value.reason == "bad_size"


def test_unknown_dtype_is_refused():
    with pytest.raises(codec.CodecError) as err:
        codec.decode(pb.Tensor(name="w", dtype=pb.DTYPE_UNSPECIFIED, shape=[1], data=b"\x00" * 4))
    assert err.value.reason == "bad_dtype"
    with pytest.raises(codec.CodecError):
        codec.decode(pb.Tensor(name="w", dtype=99, shape=[1], data=b"\x00" * 4))


def test_negative_dimension_is_refused():
    with pytest.raises(codec.CodecError) as err:
        codec.decode(pb.Tensor(name="w", dtype=pb.FLOAT32, shape=[-1, -4], data=b"\x00" * 16))
    assert err.value.reason == "bad_shape"


LAYOUT = [("a", (2, 3)), ("b", (3,))]


def _messages(**changes):
    tensors = {"a": torch.ones(2, 3), "b": torch.ones(3)}
    tensors.update(changes)
    return codec.encode_all(tensors.items())


def test_decode_all_checks_against_layout():
    decoded = codec.decode_all(_messages(), LAYOUT)
    assert [t.shape for t in decoded] == [(2, 3), (3,)]


@pytest.mark.parametrize("messages, reason", [
    (lambda: _messages()[:1], "missing_tensor"),
    (lambda: _messages() + [codec.encode("c", torch.ones(1))], "unknown_tensor"),
    (lambda: list(reversed(_messages())), "tensor_order"),
    (lambda: _messages(b=torch.ones(4)), "bad_shape"),
    (lambda: _messages(b=torch.ones(3, dtype=torch.int64)), "bad_dtype"),
])
def test_decode_all_refuses_mismatches(messages, reason):
    with pytest.raises(codec.CodecError) as err:
        codec.decode_all(messages(), LAYOUT)
    assert err.value.reason == reason


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_encode_field_parses_as_the_message_protobuf_would_build(dtype):
    named = [("a", torch.randn(3, 4)), ("b", torch.empty(0)), ("c", torch.randn(300, 200).t())]  # 240 KB
    head = pb.PushGradientsRequest(actor_id="x", seq=7, base_version=3, episode_returns=[1.0], want_params=True)
    field = pb.PushGradientsRequest.DESCRIPTOR.fields_by_name["gradients"].number
    wire = b"".join([head.SerializeToString(), *framing.encode_field(field, named, dtype)])
    expected = pb.PushGradientsRequest()
    expected.CopyFrom(head)
    expected.gradients.extend(codec.encode_all(named, dtype))
    assert pb.PushGradientsRequest.FromString(wire) == expected
    assert len(wire) == expected.ByteSize()


@pytest.mark.parametrize("length", [0, 1, 127, 128, 200, 255, 256, 16_383, 16_384, 2_097_152])
def test_tag_and_length_is_the_prefix_protobuf_writes(length):
    data = b"x" * length
    field = pb.Tensor.DESCRIPTOR.fields_by_name["data"].number
    assert pb.Tensor(data=data).SerializeToString() == (framing.tag_and_length(field, length) + data if data else b"")


def test_embed_nests_pieces_as_a_sub_message():
    params = [pb.Params(version=5).SerializeToString(),
              *framing.encode_field(pb.Params.DESCRIPTOR.fields_by_name["tensors"].number, [("w", torch.ones(2))])]
    field = pb.PushGradientsResponse.DESCRIPTOR.fields_by_name["params"].number
    reply = pb.PushGradientsResponse.FromString(b"".join([pb.PushGradientsResponse(version=5).SerializeToString(),
                                                          *framing.embed(field, params)]))
    assert reply.version == 5 and reply.params.version == 5
    assert torch.equal(codec.decode(reply.params.tensors[0]), torch.ones(2))


def test_decode_converts_to_the_dtype_asked_for():
    message = codec.encode("w", torch.tensor([1.0, -0.5]), torch.float16)
    decoded = codec.decode(message, torch.float32)
    assert decoded.dtype == torch.float32 and torch.equal(decoded, torch.tensor([1.0, -0.5]))


# Names of odd lengths put the tensors' bytes at odd offsets; the values cover rounding, float16's subnormals, its
# overflow to Inf, signed zeros and Inf. (A NaN stays a NaN, but torch itself writes bfloat16 NaNs with different
# bits in different code paths.)
FLAT_LAYOUT = [("conv.weight", (4, 3, 5)), ("b", (7,)), ("empty", (0,)), ("fc.w", (33, 65))]
SPECIAL = [1e-8, -6e-5, 3.0000001, 65504.0, 65520.0, -7e4, 0.0, -0.0, float("inf"), float("-inf")]


@pytest.fixture(params=["c", "torch"])
def conversions(request, monkeypatch):
    """Each test runs with a3c/_wire.c (where it was built; `make test` builds it) and with torch's passes."""
    if request.param == "c":
        if os.environ.get("CI"):
            assert codec.fast_conversions_available(), "a3c/_wire.c was not built"
        elif not codec.fast_conversions_available():
            pytest.skip("a3c/_wire.c is not built here (no C compiler at install time)")
    else:
        monkeypatch.setattr(codec, "_wire", None)
    return request.param


def _flat(seed=0):
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randn(sum(math.prod(s) for _, s in FLAT_LAYOUT), generator=generator) * 10.0 ** torch.randint(
        -9, 3, (1,), generator=generator)
    flat[:len(SPECIAL)] = torch.tensor(SPECIAL)
    return flat


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_flat_field_writes_the_bytes_encode_field_writes(conversions, dtype):
    flat = _flat()
    field = pb.Params.DESCRIPTOR.fields_by_name["tensors"].number
    named = zip([n for n, _ in FLAT_LAYOUT], codec.split_views(flat, FLAT_LAYOUT))
    assert framing.FlatField(field, FLAT_LAYOUT, dtype).encode(flat) == b"".join(framing.encode_field(field, named, dtype))
    flat[-1] = float("nan")
    params = pb.Params.FromString(framing.FlatField(field, FLAT_LAYOUT, dtype).encode(flat))
    assert math.isnan(codec.decode(params.tensors[-1]).reshape(-1)[-1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_decode_flat_writes_the_values_and_returns_their_sum_of_squares(conversions, dtype):
    flat = _flat(1)
    flat[len(SPECIAL) - 2:len(SPECIAL)] = 1.0  # finite everywhere, so the sum is a number to compare
    messages = codec.encode_all(zip([n for n, _ in FLAT_LAYOUT], codec.split_views(flat, FLAT_LAYOUT)), dtype)
    out = torch.full_like(flat, 123.0)
    total = codec.decode_flat(messages, FLAT_LAYOUT, out)
    assert torch.equal(out, flat.to(dtype).float())
    assert total == pytest.approx(float(out.double().square().sum()), rel=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_decode_flat_sum_is_not_finite_when_a_value_is_not(conversions, bad):
    flat = torch.zeros(sum(math.prod(s) for _, s in FLAT_LAYOUT))
    flat[-1] = bad
    messages = codec.encode_all(zip([n for n, _ in FLAT_LAYOUT], codec.split_views(flat, FLAT_LAYOUT)),
                                torch.float16)
    assert not math.isfinite(codec.decode_flat(messages, FLAT_LAYOUT, torch.empty_like(flat)))


def test_decode_flat_takes_int8_tensors_with_their_scales(conversions):
    layout = [*FLAT_LAYOUT, ("big", (64, 65))]  # large enough to travel as int8; the others go as float16
    flat = torch.linspace(-1, 1, sum(math.prod(s) for _, s in layout))
    messages = codec.encode_all(zip([n for n, _ in layout], codec.split_views(flat, layout)), torch.int8)
    assert messages[-1].dtype == pb.INT8 and len(messages[-1].scales) == 64
    out = torch.empty_like(flat)
    total = codec.decode_flat(messages, layout, out)
    torch.testing.assert_close(out, flat, atol=1 / 127, rtol=0)
    assert total == pytest.approx(float(out.square().sum()), rel=1e-5)


@pytest.mark.parametrize("messages, reason", [
    (lambda: _messages()[:1], "missing_tensor"),
    (lambda: list(reversed(_messages())), "tensor_order"),
    (lambda: _messages(b=torch.ones(4)), "bad_shape"),
    (lambda: _messages(b=torch.ones(3, dtype=torch.int64)), "bad_dtype"),
    (lambda: [_messages()[0], pb.Tensor(name="b", dtype=pb.FLOAT16, shape=[3], data=b"\0" * 5)], "bad_size"),
])
def test_decode_flat_refuses_what_decode_all_refuses(conversions, messages, reason):
    with pytest.raises(codec.CodecError) as err:
        codec.decode_flat(messages(), LAYOUT, torch.empty(9))
    assert err.value.reason == reason


def test_c_conversions_refuse_regions_outside_their_buffers():
    if not codec.fast_conversions_available():
        pytest.skip("a3c/_wire.c is not built here")
    values, template = torch.zeros(4).numpy(), bytes(8)
    with pytest.raises(ValueError, match="outside"):
        codec._wire.encode(values, template, [(2, 4, 0)], 0)  # past the values
    with pytest.raises(ValueError, match="outside"):
        codec._wire.encode(values, template, [(0, 4, 2)], 0)  # past the template
    with pytest.raises(ValueError, match="fit"):
        codec._wire.decode(torch.zeros(4).numpy(), 2, bytes(8), 0)  # 4 values from index 2 of 4
