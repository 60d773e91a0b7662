"""The actor's side of the gRPC link: deadlines on every call, message limits taken from the learner."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import grpc
import torch

from a3c import codec
from a3c.wire import channel_options
from actor.metrics import ActorMetrics
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc


class LearnerUnreachable(RuntimeError):
    """The learner did not answer in time."""


class LearnerClient:
    def __init__(self, address: str, actor_id: str, rpc_timeout: float, metrics: ActorMetrics) -> None:
        self.address = address
        self.actor_id = actor_id
        self.rpc_timeout = rpc_timeout
        self.metrics = metrics
        self.spec: pb.RunSpec | None = None
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.LearnerStub | None = None

    def connect(self, timeout: float) -> pb.RunSpec:
        """Wait up to `timeout` seconds for the learner, fetch the run spec, open a channel sized for it."""
        with grpc.insecure_channel(self.address) as bootstrap:
            try:
                spec = pb_grpc.LearnerStub(bootstrap).GetRunSpec(
                    pb.GetRunSpecRequest(actor_id=self.actor_id), timeout=timeout, wait_for_ready=True)
            except grpc.RpcError as err:
                if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise LearnerUnreachable(f"no learner answered at {self.address} within {timeout:g}s") from None
                raise
        self.close()
        self.spec = spec
        self._channel = grpc.insecure_channel(self.address, options=channel_options(spec.max_message_bytes))
        self._stub = pb_grpc.LearnerStub(self._channel)
        return spec

    def _call(self, method: str, rpc: Callable, request):
        """One timed call with the standard deadline; bytes and failures are counted."""
        start = time.perf_counter()
        try:
            reply = rpc(request, timeout=self.rpc_timeout)
        except grpc.RpcError as err:
            self.metrics.rpc_errors.labels(method, err.code().name).inc()
            raise
        finally:
            self.metrics.rpc_seconds.labels(method).observe(time.perf_counter() - start)
            self.metrics.sent_bytes.inc(request.ByteSize())
        self.metrics.received_bytes.inc(reply.ByteSize())
        return reply

    def get_params(self, have_version: int) -> pb.Params:
        request = pb.GetParamsRequest(actor_id=self.actor_id, have_version=have_version)
        return self._call("GetParams", self._stub.GetParams, request)

    def push(self, seq: int, base_version: int, named_gradients: Sequence[tuple[str, torch.Tensor]],
             env_frames: int, agent_steps: int, episode_returns: Sequence[float], loss: pb.LossStats,
             want_params: bool = True) -> pb.PushGradientsResponse:
        dtype = codec.TORCH_DTYPES[self.spec.wire_dtype]
        request = pb.PushGradientsRequest(
            actor_id=self.actor_id, seq=seq, base_version=base_version,
            gradients=codec.encode_all(named_gradients, dtype), env_frames=env_frames, agent_steps=agent_steps,
            episode_returns=episode_returns, loss=loss, want_params=want_params)
        return self._call("PushGradients", self._stub.PushGradients, request)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
