"""The actor-critic networks: the A3C paper's CNN for Atari frames and a small MLP for vector observations."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from a3c.config import CONV_PRECISIONS
from proto import a3c_pb2 as pb

if TYPE_CHECKING:
    from a3c.envs import EnvInfo


@dataclass(frozen=True)
class ModelSpec:
    kind: str                     # "cnn" or "mlp"
    obs_shape: tuple[int, ...]
    num_actions: int
    # Subtract each frame's mean brightness before the first convolution. False for networks from before it.
    center_frames: bool = False

    @classmethod
    def for_env(cls, info: "EnvInfo", center_frames: bool) -> "ModelSpec":
        """The network for an environment; centering applies to Atari frames only."""
        return cls(info.model_kind, info.obs_shape, info.num_actions,
                   center_frames=center_frames and info.model_kind == "cnn")

    @classmethod
    def from_message(cls, message: pb.ModelSpec) -> "ModelSpec":
        """The network a run spec describes (what an actor builds)."""
        return cls(kind=message.kind, obs_shape=tuple(message.obs_shape), num_actions=message.num_actions,
                   center_frames=message.center_frames)

    def to_message(self) -> pb.ModelSpec:
        return pb.ModelSpec(kind=self.kind, obs_shape=list(self.obs_shape), num_actions=self.num_actions,
                            center_frames=self.center_frames)

    @classmethod
    def from_dict(cls, saved: dict) -> "ModelSpec":
        """A spec as checkpoints store it (`dataclasses.asdict`); fields added since take their defaults."""
        return cls(**{**saved, "obs_shape": tuple(saved["obs_shape"])})


class ActorCritic(nn.Module):
    """A shared torso with a policy head (action logits) and a value head."""

    def __init__(self, torso: nn.Module, torso_out: int, num_actions: int, scale: float = 1.0,
                 channels_last: bool = False, center_frames: bool = False) -> None:
        super().__init__()
        self.torso = torso
        self.channels_last = channels_last
        self.center_frames = center_frames
        self.policy = nn.Linear(torso_out, num_actions)
        self.value = nn.Linear(torso_out, 1)
        self.scale = scale  # uint8 frames come in as 0..255
        # Torso layers before this index are convolutions, which may run in bfloat16 (set_conv_precision).
        self._conv_end = next((i for i, m in enumerate(torso) if isinstance(m, nn.Flatten)), 0)
        # The torso split where `features` ends and `heads` begins (plain tuples: not registered twice as modules).
        self._feature_layers = tuple(torso[:self._conv_end + 1]) if self._conv_end else ()
        self._dense_layers = tuple(torso[len(self._feature_layers):])
        self.bfloat16_convs = False
        for module in self.torso.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(module.weight, gain=nn.init.calculate_gain("relu"))
                nn.init.zeros_(module.bias)
        # A near-uniform initial policy and an unbiased value estimate.
        nn.init.orthogonal_(self.policy.weight, gain=0.01)
        nn.init.zeros_(self.policy.bias)
        nn.init.orthogonal_(self.value.weight, gain=1.0)
        nn.init.zeros_(self.value.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [B, *obs_shape] -> (logits [B, A], value [B])."""
        return self.heads(self.features(obs))

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [B, *obs_shape] -> the convolutions' flattened output [B, F] (for a network without convolutions,
        the scaled observations)."""
        x = obs.to(torch.float32, copy=True)  # the caller's tensor stays as it is: the steps below work in place
        if self.center_frames:
            # Atari backgrounds are uniform: uncentered, every first-layer weight sees the same input, RMSProp
            # moves them all by about lr per update, and a unit's response to the background random-walks until
            # it is negative everywhere and the unit is dead for good (15 of 16 conv1 channels in trained runs).
            # Before scaling, so the sums of whole pixel values are exact and a uniform background is exactly 0.
            x.sub_(x.mean(dim=(-2, -1), keepdim=True))
        if self.scale != 1.0:
            x.mul_(self.scale)
        if not self._conv_end:
            return x
        if self.channels_last:
            # Converted after the centering: in channels-last order its broadcast over 4 channels does not vectorize.
            x = x.contiguous(memory_format=torch.channels_last)
        *convolutions, flatten = self._feature_layers
        # Autocast per call: the weights' bfloat16 copies are remade each pass, so they follow every update.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16_convs):
            for layer in convolutions:
                x = layer(x)
        return flatten(x.float())

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, F] (from `features`) -> (logits [B, A], value [B]): the dense layers."""
        x = features
        for layer in self._dense_layers:
            x = layer(x)
        return self.policy(x), self.value(x).squeeze(-1)

    def set_conv_precision(self, precision: str) -> str:
        """"float32", "bfloat16", or "auto" (bfloat16 where the CPU computes it natively); returns the one used.

        Only convolutions change: the dense layers, the weights and their gradients stay float32.
        """
        if precision not in CONV_PRECISIONS:
            raise ValueError(f"unknown convolution precision {precision!r}")
        if precision == "auto":
            precision = "bfloat16" if self._conv_end and native_bfloat16() else "float32"
        self.bfloat16_convs = precision == "bfloat16" and self._conv_end > 0
        return "bfloat16" if self.bfloat16_convs else "float32"


def native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions on this CPU's own instructions (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private helper: absent in some builds
        return False


def build_model(spec: ModelSpec) -> ActorCritic:
    if spec.kind == "cnn":
        channels, height, width = spec.obs_shape
        # The A3C paper's network: conv 16@8x8/4, conv 32@4x4/2, fc 256.
        conv = [("conv1", nn.Conv2d(channels, 16, kernel_size=8, stride=4)), ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(16, 32, kernel_size=4, stride=2)), ("relu2", nn.ReLU()),
                ("flatten", nn.Flatten())]
        with torch.no_grad():
            flat = nn.Sequential(OrderedDict(conv))(torch.zeros(1, channels, height, width)).shape[1]
        torso = nn.Sequential(OrderedDict(conv + [("fc", nn.Linear(flat, 256)), ("relu3", nn.ReLU())]))
        # Channels-last convolutions run faster on CPU; the wire still carries each tensor in standard order.
        model = ActorCritic(torso, 256, spec.num_actions, scale=1.0 / 255.0, channels_last=True,
                            center_frames=spec.center_frames)
        return model.to(memory_format=torch.channels_last)
    if spec.kind == "mlp":
        (size,) = spec.obs_shape
        torso = nn.Sequential(OrderedDict([("fc1", nn.Linear(size, 64)), ("tanh1", nn.Tanh()),
                                           ("fc2", nn.Linear(64, 64)), ("tanh2", nn.Tanh())]))
        return ActorCritic(torso, 64, spec.num_actions)
    raise ValueError(f"unknown model kind {spec.kind!r}")


def parameter_layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of each trainable parameter, in state_dict order: the order tensors travel in."""
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]
