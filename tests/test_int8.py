"""The int8 wire: per-row scales, stochastic rounding of gradients, and refusal of malformed scales."""

import pytest
import torch

from a3c import codec, int8
from proto import a3c_pb2 as pb


def test_int8_quantizes_each_row_to_its_own_scale():
    source = torch.randn(4, 1100) * torch.tensor([[1.0], [1e-3], [50.0], [0.0]])  # rows far apart, one all zero
    message = codec.encode("w", source, torch.int8)
    assert message.dtype == pb.INT8 and len(message.data) == source.numel() and len(message.scales) == 4
    decoded = codec.decode(message)
    assert decoded.dtype == torch.float32
    half_step = torch.tensor(message.scales)[:, None] / 2
    assert ((decoded - source).abs() <= half_step * 1.0001).all()  # nearest rounding, row by row
    assert torch.equal(decoded[3], torch.zeros(1100))


@pytest.mark.parametrize("shape", [(), (7,), (0,), (3, 0), (2, 3, 4, 4), (64, 8, 3, 3), (5000,)])
def test_int8_handles_every_shape(shape):
    source = torch.randn(shape)
    message = codec.encode("w", source, torch.int8)
    small = source.numel() < int8.QUANTIZE_MIN_VALUES  # biases and heads go as float16
    assert message.dtype == (pb.FLOAT16 if small else pb.INT8)
    decoded = codec.decode(message, torch.float32)
    assert decoded.shape == source.shape
    assert torch.allclose(decoded, source, atol=source.abs().max().item() / 127 if source.numel() else 0)


def test_stochastic_rounding_is_unbiased():
    # Components far below one step of the row's scale: nearest rounding would send zeros every time.
    source = torch.cat([torch.tensor([1.0]), torch.linspace(-0.002, 0.002, 99)])
    generator = torch.Generator().manual_seed(0)
    mean = sum(int8.quantize(source, stochastic=True, generator=generator).dequantize() for _ in range(4000)) / 4000
    assert torch.allclose(mean, source, atol=4e-4)
    assert not int8.quantize(source).dequantize()[1:].any()


def test_quantized_gradients_stay_within_the_clip_norm():
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        grads = [torch.randn(64, 81, generator=generator), torch.randn(5, generator=generator)]
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        grads = [g * 0.5 / norm for g in grads]  # clipped exactly to 0.5, as the actor leaves them
        quantized = int8.quantize_gradients(grads, 0.5, generator)
        decoded = [codec.decode(codec.encode("g", q), torch.float32) for q in quantized]
        assert torch.sqrt(sum(d.square().sum() for d in decoded)) <= 0.5 * 1.0001
        assert all(torch.allclose(d, g, atol=g.abs().max().item() / 60) for d, g in zip(decoded, grads))


@pytest.mark.parametrize("scales, dtype, reason", [
    ([float("nan"), 1.0], pb.INT8, "non_finite"),
    ([float("inf"), 1.0], pb.INT8, "non_finite"),
    ([1.0, 1.0, 1.0, 1.0], pb.INT8, "bad_scales"),  # 4 scales for 6 values
    ([1.0] * 7, pb.INT8, "bad_scales"),  # more scales than values
    ([1.0], pb.UINT8, "bad_scales"),  # scales only go with int8
])
def test_malformed_scales_are_refused(scales, dtype, reason):
    with pytest.raises(codec.CodecError) as err:
        codec.decode(pb.Tensor(name="w", dtype=dtype, shape=[2, 3], data=b"\x01" * 6, scales=scales))
    assert err.value.reason == reason


def test_gradients_for_the_wire_are_rounded_for_int8_and_cast_otherwise():
    grads = [torch.randn(64, 81) * 1e-3, torch.randn(5) * 1e-3]  # a large tensor and a bias
    large, bias = codec.gradients_for_wire(grads, torch.int8, max_norm=0.5)
    assert isinstance(large, int8.Quantized) and bias.dtype == torch.float16  # a bias is never cast to int8
    assert [g.dtype for g in codec.gradients_for_wire(grads, torch.float16, max_norm=0.5)] == [torch.float16] * 2
