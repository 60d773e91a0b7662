"""Learner capacity: synthetic pushers with a precomputed gradient (no environments) hammer one learner.

Each pusher behaves like an actor on the wire: it reads the learner's run spec (model, wire dtype, clip norm), pushes a
full gradient with its last version as the base and asks for the new parameters in the reply. The learner's own
counter says how many updates it applied.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventType

import grpc
import torch

from a3c import codec
from a3c.config import ActorConfig
from a3c.framing import Push
from a3c.model import ModelSpec, build_model, parameter_layout
from a3c.metrics import new_registry
from actor.client import LearnerClient
from actor.metrics import ActorMetrics
from proto import a3c_pb2 as pb


def _push_loop(address: str, name: str, threads: int, pushing: Synchronized, stop: EventType) -> None:
    """`threads` pushers in this process; each adds one to `pushing` after its first accepted push."""
    def loop(index: int) -> None:
        # The actor's own client, so the pushers pay what actors pay to assemble a push and read its reply.
        client = LearnerClient(address, f"{name}-{index}", rpc_timeout=10, metrics=ActorMetrics(new_registry()))
        spec = client.connect(timeout=60)
        model = build_model(ModelSpec.from_message(spec.model))
        scale = 0.9 * spec.max_grad_norm / sum(p.numel() for p in model.parameters()) ** 0.5
        # Already in the wire dtype, as an actor's gradients are after their one conversion.
        names, shapes = zip(*parameter_layout(model))
        wire = codec.gradients_for_wire([torch.full(s, scale) for s in shapes], codec.TORCH_DTYPES[spec.wire_dtype],
                                        spec.max_grad_norm)
        gradients = list(zip(names, wire))
        # Each push claims what an actor's would: one rollout on the default number of environments.
        steps = spec.t_max * ActorConfig().num_envs
        version, seq, counted = 0, 0, False
        while not stop.is_set():
            seq += 1
            try:
                push = Push(seq, version, gradients, steps * spec.frames_per_step, steps, [], pb.LossStats())
                version = client.push(push).version
            except grpc.RpcError:
                continue
            if not counted:
                with pushing.get_lock():
                    pushing.value += 1
                counted = True
        client.close()

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


class Pushers:
    """Processes of pushing threads. Measure after `wait_all_pushing()`: on a many-core machine dozens of processes
    importing torch at once take far longer than a fixed warm-up would allow."""

    def __init__(self, address: str, processes: int, threads: int) -> None:
        context = multiprocessing.get_context("spawn")  # no gRPC state inherited through fork
        self.count = processes * threads
        self._pushing, self._stop = context.Value("i", 0), context.Event()
        self._processes = [context.Process(target=_push_loop, daemon=True,
                                           args=(address, f"pusher{p}", threads, self._pushing, self._stop))
                           for p in range(processes)]
        for process in self._processes:
            process.start()

    def wait_all_pushing(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._pushing.value < self.count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self._pushing.value} of {self.count} pushers got a push through "
                                   f"in {timeout:.0f} s")
            if not all(process.is_alive() for process in self._processes):
                raise RuntimeError("a pusher process died")
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        for process in self._processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
