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
from a3c.wire import channel_options, model_spec
from proto import a3c_pb2 as pb
from proto import a3c_pb2_grpc as pb_grpc


def _push_loop(address: str, name: str, threads: int, seconds: float) -> None:
    with grpc.insecure_channel(address) as channel:
        spec = pb_grpc.LearnerStub(channel).GetRunSpec(pb.GetRunSpecRequest(actor_id=name), timeout=30,
                                                       wait_for_ready=True)
    model = build_model(model_spec(spec))
    scale = 0.9 * spec.max_grad_norm / sum(p.numel() for p in model.parameters()) ** 0.5
    gradients = codec.encode_all(((n, torch.full(s, scale)) for n, s in parameter_layout(model)),
                                 codec.TORCH_DTYPES[spec.wire_dtype])
    stop_at = time.monotonic() + seconds

    def loop(index: int) -> None:
        version, seq = 0, 0
        with grpc.insecure_channel(address, options=channel_options(spec.max_message_bytes)) as channel:
            stub = pb_grpc.LearnerStub(channel)
            while time.monotonic() < stop_at:
                seq += 1
                request = pb.PushGradientsRequest(actor_id=f"{name}-{index}", seq=seq, base_version=version,
                                                  gradients=gradients, env_frames=0, want_params=True)
                try:
                    version = stub.PushGradients(request, timeout=10).version
                except grpc.RpcError:
                    pass

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
