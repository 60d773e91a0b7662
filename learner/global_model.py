"""The global actor-critic, its optimizer and its version: the state every actor contributes to."""

from __future__ import annotations

import hashlib
import threading
from typing import Sequence

import torch

from a3c import codec
from a3c.model import ModelSpec, build_model, parameter_layout
from learner.optimizers import make_optimizer
from proto import a3c_pb2 as pb


_TENSORS_FIELD = pb.Params.DESCRIPTOR.fields_by_name["tensors"].number


class GlobalModel:
    """Applies gradients one at a time under a lock; each applied gradient bumps the version by one."""

    def __init__(self, spec: ModelSpec, optimizer: str, lr: float, rmsprop_alpha: float = 0.99,
                 eps: float = 1e-5, wire_dtype: torch.dtype = torch.float32) -> None:
        self.spec = spec
        self.model = build_model(spec)
        self.params = list(self.model.parameters())
        self.layout = parameter_layout(self.model)
        self.optimizer = make_optimizer(optimizer, self.params, lr, rmsprop_alpha, eps)
        self.wire_dtype = wire_dtype
        self.version = 0
        self.lock = threading.Lock()
        self._encoded: tuple[int, list[bytes]] | None = None

    def apply(self, gradients: Sequence[torch.Tensor]) -> int:
        """One optimizer step with the given gradients (in layout order). Call with `lock` held."""
        # Parameters whose gradient is often zero (dead ReLUs) decay RMSProp's running average into denormal
        # floats, and CPU arithmetic on those is many times slower: a third of the entries after 30,000 Pong
        # updates, 9.6 ms per step instead of 3. Flushing them to zero changes nothing (sqrt of them is far
        # below eps). The setting belongs to the calling thread, so each gRPC worker sets it here.
        torch.set_flush_denormal(True)
        for param, grad in zip(self.params, gradients, strict=True):
            param.grad = grad
        self.optimizer.step()
        for param in self.params:
            param.grad = None
        self.version += 1
        return self.version

    def params_pieces(self) -> list[bytes]:
        """The current parameters as a serialized `Params` message, in pieces to join; encoded at most once per
        version. Call with `lock` held."""
        if self._encoded is None or self._encoded[0] != self.version:
            tensors = codec.encode_field(_TENSORS_FIELD, self.model.named_parameters(), self.wire_dtype)
            self._encoded = (self.version, [pb.Params(version=self.version).SerializeToString(), *tensors])
        return self._encoded[1]

    def state(self) -> dict:
        """Model, optimizer and version as plain tensors and numbers (for checkpoints)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "version": self.version}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])
        self._encoded = None

    def digest(self) -> str:
        """A hash of the exact parameter bytes, to prove a refused push changed nothing."""
        h = hashlib.sha256()
        for p in self.params:
            h.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()
