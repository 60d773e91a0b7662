"""The ONNX form of a policy: `a3c export --format onnx` writes it; `a3c play` and `a3c evaluate` read it.

The file holds the whole forward pass (frame centering and scaling included), so a server needs onnxruntime and
the a3c preprocessing of observations, not torch. ONNX metadata says what it is: see METADATA below.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterator

import torch

from a3c.errors import UserFacingError
from a3c.files import replace_file
from a3c.model import ActorCritic, ModelSpec
from apps import playing

INSTALL_HINT = "pip install 'a3c-grpc[onnx]'"
INPUT = "obs"
OUTPUTS = ("logits", "value")
# What a3c.envs.observation_array feeds each kind of network: Atari frames stay uint8, vectors are float32.
OBS_DTYPES = {"cnn": torch.uint8, "mlp": torch.float32}
ORT_TYPES = {torch.uint8: "tensor(uint8)", torch.float32: "tensor(float)"}
# metadata_props keys (all values are strings); the note is free text, the others describe the network.
METADATA = ("a3c.env", "a3c.version", "a3c.model_kind", "a3c.obs_shape", "a3c.num_actions", "a3c.center_frames",
            "a3c.note")


def _require(name: str) -> ModuleType:
    """An optional dependency of the ONNX form, or one line saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserFacingError(f"ONNX policies need {name}, which is not installed: {INSTALL_HINT}") from None


def export_onnx(source: str | Path, target: str | Path, note: str) -> Path:
    """The network of a checkpoint (file, directory or exported .pt) as an ONNX model with a dynamic batch."""
    onnx = _require("onnx")
    _require("onnxscript")  # the torch.export-based exporter translates with it
    policy = playing.load_policy(source)
    if not isinstance(policy.model, ActorCritic) or policy.spec is None:
        raise UserFacingError(f"{source} is already an ONNX policy; export its checkpoint instead")
    model, spec = policy.model, policy.spec
    model.set_conv_precision("float32")  # onnxruntime computes in float32; bfloat16 would only add rounding
    # A batch of 2: with 1, torch.export would bake the batch size into the graph as a constant.
    example = torch.zeros((2, *spec.obs_shape), dtype=OBS_DTYPES[spec.kind])
    # The torch.export-based exporter (dynamo=True): it works here and gives a clean graph (Conv, Gemm, ReduceMean),
    # while the TorchScript one is deprecated since torch 2.9.
    with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations inside the exporter
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, input_names=[INPUT],
                                    output_names=list(OUTPUTS),
                                    dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}})
    proto = program.model_proto
    values = (policy.env_id, policy.version, spec.kind, json.dumps(list(spec.obs_shape)), spec.num_actions,
              json.dumps(spec.center_frames), note)
    onnx.helper.set_model_props(proto, {key: str(value) for key, value in zip(METADATA, values)})
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return replace_file(target, proto.SerializeToString())


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Only errors from these loggers for a while: the exporter reports each of its passes, and warns that
    torchvision (which a3c never uses) is missing."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class OnnxNetwork:
    """An onnxruntime session called like the torch network: obs [B, ...] -> (logits [B, A], value [B])."""

    def __init__(self, session) -> None:
        self.session = session

    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value = self.session.run(list(OUTPUTS), {INPUT: obs.numpy(force=True)})
        return torch.from_numpy(logits), torch.from_numpy(value)


def load_onnx_policy(path: str | Path) -> playing.Policy:
    """A policy from an ONNX file that `export_onnx` wrote, played by onnxruntime on one thread."""
    ort = _require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"{path}: no such ONNX policy")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # batch-1 inference gains nothing from more, and it may share the machine
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        missing = [key for key in METADATA if key not in meta]
        if missing:
            raise ValueError(f"no a3c metadata {', '.join(missing)}: not written by a3c export --format onnx")
        spec = ModelSpec(kind=meta["a3c.model_kind"], obs_shape=tuple(json.loads(meta["a3c.obs_shape"])),
                         num_actions=int(meta["a3c.num_actions"]),
                         center_frames=bool(json.loads(meta["a3c.center_frames"])))
        _check_signature(session, spec)
        version = int(meta["a3c.version"])
    except Exception as err:  # not ONNX, torn, or an ONNX model of something else
        raise playing._unusable(path, err) from None
    return playing.Policy(env_id=meta["a3c.env"], model=OnnxNetwork(session), version=version, spec=spec)


def _check_signature(session, spec: ModelSpec) -> None:
    """The inputs and outputs a3c feeds and reads, or ValueError."""
    inputs = [(i.name, i.type, i.shape[1:]) for i in session.get_inputs()]
    wanted = [(INPUT, ORT_TYPES[OBS_DTYPES[spec.kind]], list(spec.obs_shape))]
    if inputs != wanted:
        raise ValueError(f"inputs {inputs}, expected {wanted} after a batch dimension")
    outputs = tuple(o.name for o in session.get_outputs())
    if outputs != OUTPUTS:
        raise ValueError(f"outputs {list(outputs)}, expected {list(OUTPUTS)}")
