"""The global actor-critic, its optimizer and its version: the state every actor contributes to."""

from __future__ import annotations

import hashlib
import math
import threading
from typing import Sequence

import torch

from a3c.codec import split_views
from a3c.framing import ParamsEncoder
from a3c.model import ModelSpec, build_model, parameter_layout
from learner.optimizers import make_optimizer


class GlobalModel:
    """Applies gradients one at a time under a lock; each applied gradient bumps the version by one.

    Every parameter lives in one flat float32 buffer, in layout order (the model's tensors are views of it): the
    optimizer step is a few operations on one tensor instead of a few per parameter, a received gradient is
    decoded straight into one buffer, and the reply's parameters are converted to the wire dtype in one go
    (docs/benchmarks.md has the effect).
    """

    def __init__(self, spec: ModelSpec, optimizer: str, lr: float, rmsprop_alpha: float = 0.99,
                 eps: float = 1e-5, wire_dtype: torch.dtype = torch.float32) -> None:
        self.spec = spec
        self.model = build_model(spec)
        self.layout = parameter_layout(self.model)
        self.flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]))
        self.params = list(self.model.parameters())
        for param, view in zip(self.params, self.views(self.flat.data)):
            param.data = view  # C order, as on the wire; the learner never runs the network, so no channels-last
        self.optimizer = make_optimizer(optimizer, [self.flat], lr, rmsprop_alpha, eps)
        self.wire_dtype = wire_dtype
        self.encode = ParamsEncoder(self.layout, wire_dtype)
        self.version = 0
        self.lock = threading.Lock()
        self._encoded: tuple[int, bytes] | None = None

    @property
    def num_params(self) -> int:
        return self.flat.numel()

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat buffer of this model's size, as one view per parameter (in layout order)."""
        return split_views(flat, self.layout)

    def apply(self, gradient: torch.Tensor | Sequence[torch.Tensor]) -> int:
        """One optimizer step with a flat gradient (or one tensor per parameter, in layout order). Call with `lock`
        held."""
        # Parameters whose gradient is often zero (dead ReLUs) decay RMSProp's running average into denormal
        # floats, on which CPU arithmetic is several times slower; as zeros they change nothing (their sqrt is far
        # below eps). The setting belongs to the calling thread, so each gRPC worker sets it here.
        torch.set_flush_denormal(True)
        if not isinstance(gradient, torch.Tensor):
            gradient = torch.cat([g.reshape(-1) for g in gradient])
        self.flat.grad = gradient.reshape(self.flat.shape)
        self.optimizer.step()
        self.flat.grad = None
        self.version += 1
        return self.version

    def params_message(self) -> bytes:
        """The current parameters as a serialized `Params` message, encoded at most once per version (actors
        connecting together pull the same one). Call with `lock` held."""
        if self._encoded is None or self._encoded[0] != self.version:
            self._encoded = (self.version, self.encode.params(self.version, self.flat))
        return self._encoded[1]

    def push_reply(self) -> bytes:
        """The reply to the push that made the current version, with its parameters. Call with `lock` held."""
        return self.encode.push_reply(self.version, self.flat)

    def state(self) -> dict:
        """Model, optimizer and version as plain tensors and numbers (for checkpoints)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "version": self.version}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(self._flat_optimizer_state(state["optimizer"]))
        self.version = int(state["version"])
        self._encoded = None

    def _flat_optimizer_state(self, saved: dict) -> dict:
        """Optimizer state from a checkpoint written before the flat buffer (one entry per parameter), merged into
        the one entry of the flat parameter; a flat one as it is."""
        groups, per_param = saved["param_groups"], saved["state"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.layout):
            return saved
        entries = [per_param.get(index, {}) for index in groups[0]["params"]]
        merged = {}
        for key, first in entries[0].items():
            values = [entry[key] for entry in entries]
            if all(torch.is_tensor(v) and v.numel() == math.prod(shape) for v, (_, shape) in zip(values, self.layout)):
                merged[key] = torch.cat([v.reshape(-1) for v in values])  # C order, like the flat buffer
            else:  # a shared step count
                merged[key] = first
        return {"state": {0: merged} if merged else {}, "param_groups": [{**groups[0], "params": [0]}]}

    def digest(self) -> str:
        """A hash of the exact parameter bytes, to prove a refused push changed nothing."""
        h = hashlib.sha256()
        for p in self.params:
            h.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()
