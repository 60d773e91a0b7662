"""Learner capacity: synthetic pushers with a precomputed gradient (no environments) hammer one learner.

Each pusher behaves like an actor on the wire: it reads the learner's run spec (model, wire dtype, clip norm), pushes a
full gradient with its last version as the base and asks for the new parameters in the reply. The learner's own
counter says how many updates it applied.
"""

from __future__ import annotations

import multiprocessing
import threading
import time

import grpc
import torch

from a3c import codec
from a3c.model import build_model, parameter_layout
from a3c.metrics import new_registry
from a3c.wire import model_spec
from actor.client import LearnerClient
from actor.metrics import ActorMetrics
from proto import a3c_pb2 as pb


def _push_loop(address: str, name: str, threads: int, seconds: float) -> None:
    stop_at = time.monotonic() + seconds

    def loop(index: int) -> None:
        # The actor's own client, so the pushers pay what actors pay to assemble a push and read its reply.
        client = LearnerClient(address, f"{name}-{index}", rpc_timeout=10, metrics=ActorMetrics(new_registry()))
        spec = client.connect(timeout=30)
        model = build_model(model_spec(spec))
        scale = 0.9 * spec.max_grad_norm / sum(p.numel() for p in model.parameters()) ** 0.5
        # Already in the wire dtype, as an actor's gradients are after their one conversion.
        names, shapes = zip(*parameter_layout(model))
        wire = codec.gradients_for_wire([torch.full(s, scale) for s in shapes], codec.TORCH_DTYPES[spec.wire_dtype],
                                        spec.max_grad_norm)
        gradients = list(zip(names, wire))
        version, seq = 0, 0
        while time.monotonic() < stop_at:
            seq += 1
            try:
                version = client.push(seq, version, gradients, 0, 0, [], pb.LossStats()).version
            except grpc.RpcError:
                pass
        client.close()

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def start_pushers(address: str, processes: int, threads: int, seconds: float) -> list[multiprocessing.Process]:
    context = multiprocessing.get_context("spawn")  # no gRPC state inherited through fork
    pushers = [context.Process(target=_push_loop, args=(address, f"pusher{p}", threads, seconds)) for p in range(processes)]
    for pusher in pushers:
        pusher.start()
    return pushers
