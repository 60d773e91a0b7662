"""bfloat16 convolutions on actors: the same network, nearly the same gradients, float32 everywhere else."""

import numpy as np
import pytest
import torch

from a3c.config import ActorConfig, ConfigError
from a3c.envs import make_env_batch
from a3c.losses import a3c_loss
from a3c.model import ModelSpec, build_model, native_bfloat16

PONG_NET = ModelSpec("cnn", (4, 84, 84), 6)


@pytest.fixture(scope="module")
def pong_frames() -> torch.Tensor:
    """40 observations of real Pong under random play: mostly background, a ball and two paddles."""
    envs = make_env_batch("PongNoFrameskip-v4", 8, seed=3)
    envs.reset()
    rng = np.random.default_rng(0)
    frames = [envs.step(rng.integers(0, 6, 8)).obs for _ in range(60)]
    envs.close()
    return torch.from_numpy(np.concatenate(frames[-5:]))


def _gradients(model, frames):
    logits, values = model(frames)
    assert logits.dtype == values.dtype == torch.float32
    actions = torch.arange(len(frames)) % logits.shape[1]
    returns = torch.linspace(-1, 1, len(frames))
    model.zero_grad()
    a3c_loss(logits, values, actions, returns, 0.01, 0.5).total.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_bfloat16_convolutions_give_nearly_the_float32_gradient(pong_frames):
    model = build_model(PONG_NET)
    assert model.set_conv_precision("float32") == "float32"
    reference = _gradients(model, pong_frames)
    assert model.set_conv_precision("bfloat16") == "bfloat16"
    reduced = _gradients(model, pong_frames)
    assert not all(torch.equal(ref, got) for ref, got in zip(reference, reduced))  # bfloat16 did run
    for (name, param), ref, got in zip(model.named_parameters(), reference, reduced):
        assert got.dtype == param.dtype == torch.float32, name
        cosine = torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0)
        # bfloat16 keeps 8 bits of mantissa: measured 0.989 (conv1 weights) to 1.0 (heads)
        assert cosine > 0.97, f"{name}: cosine {cosine:.4f} to the float32 gradient"


def test_float32_is_the_network_as_before(pong_frames):
    model = build_model(PONG_NET)
    expected = model(pong_frames)
    model.set_conv_precision("float32")
    assert all(torch.equal(a, b) for a, b in zip(model(pong_frames), expected))


def test_auto_picks_bfloat16_only_on_native_hardware_and_never_for_dense_networks():
    assert build_model(PONG_NET).set_conv_precision("auto") == ("bfloat16" if native_bfloat16() else "float32")
    mlp = build_model(ModelSpec("mlp", (4,), 2))
    assert mlp.set_conv_precision("bfloat16") == "float32"
    assert mlp(torch.zeros(3, 4))[0].dtype == torch.float32


def test_an_unknown_precision_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown convolution precision 'float8'"):
        build_model(PONG_NET).set_conv_precision("float8")
    with pytest.raises(ConfigError):
        ActorConfig(conv_precision="float8")
