"""Play a trained network: `a3c evaluate` (returns of greedy and sampled episodes) and `a3c play` (a GIF or a
window). Everything here reads a learner checkpoint; nothing talks to a learner."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from a3c import checkpoints
from a3c.episodes import Network, play_episode, summarize
from a3c.errors import UserFacingError
from a3c.model import ModelSpec, build_model
from a3c.video import STEP_MS, FrameSampler, write_video

# The Pong network that ships with the package (`a3c export` made it; docs/learning.md says how it was trained).
SHIPPED = Path(__file__).resolve().parent / "pretrained" / "pong.pt"


@dataclass
class Policy:
    env_id: str
    model: Network  # an ActorCritic, or an onnxruntime session called the same way (apps.onnx_policy)
    version: int
    spec: ModelSpec | None = None  # what the network takes and gives: `a3c export --format onnx` needs it


def _read(path: str | Path) -> tuple[dict, Path]:
    """A checkpoint's contents (a file, or a checkpoint directory: its best by evaluation, else best by training
    return, else latest file)."""
    path = Path(path)
    if path.is_dir():
        names = (checkpoints.BEST_EVAL, checkpoints.BEST, checkpoints.LATEST)
        path = next((path / n for n in names if (path / n).exists()), path)
    try:
        return checkpoints.load(path), path
    except (FileNotFoundError, IsADirectoryError):
        raise UserFacingError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError:
        raise UserFacingError(f"{path} is not a usable a3c checkpoint: it does not load as tensors and plain "
                              f"values") from None
    except Exception as err:  # torn, or written by something else
        raise _unusable(path, err) from None


def _unusable(path: Path, err: Exception) -> UserFacingError:
    first_line = (str(err).strip().splitlines() or [""])[0]
    return UserFacingError(f"{path} is not a usable a3c checkpoint ({type(err).__name__}: {first_line})")


def load_policy(path: str | Path = SHIPPED) -> Policy:
    """The network of a learner checkpoint, or of an exported one such as the shipped Pong model (.pt or .onnx)."""
    if str(path).lower().endswith(".onnx"):
        from apps.onnx_policy import load_onnx_policy  # here, not above: apps.onnx_policy imports this module

        return load_onnx_policy(path)
    torch.set_num_threads(1)  # batch-1 inference gains nothing from more, and it may share the machine
    state, path = _read(path)
    try:
        spec = ModelSpec.from_dict(state["model_spec"])
        model = build_model(spec)
        model.load_state_dict(state["global"]["model"])
    except Exception as err:  # keys or shapes of something else
        raise _unusable(path, err) from None
    model.eval()
    return Policy(env_id=state["env"], model=model, version=int(state["global"]["version"]), spec=spec)


def evaluate(policy: Policy, episodes: int, seed: int = 0) -> dict:
    """Greedy and sampled play, `episodes` each, with different seeds per episode."""
    return {mode: summarize([play_episode(policy.env_id, policy.model, mode == "greedy", seed + i)
                             for i in range(episodes)])
            for mode in ("greedy", "sampled")}


def format_evaluation(policy: Policy, report: dict) -> str:
    lines = [f"{policy.env_id}, network version {policy.version}"]
    for mode, s in report.items():
        lines.append(f"{mode:>8}: mean {s['mean']:+.2f}  std {s['std']:.2f}  min {s['min']:+.0f}  "
                     f"max {s['max']:+.0f}  over {s['episodes']} episodes")
    lines.append(json.dumps({"env": policy.env_id, "version": policy.version, **report}))
    return "\n".join(lines)


def export_policy(source: str | Path, target: str | Path, note: str) -> Path:
    """The network alone, in float16 (what actors play with anyway), with where it came from: a small file to
    ship or share. `a3c evaluate` and `a3c play` read it like any checkpoint."""
    state, path = _read(source)
    try:
        model = {name: t.half() if t.is_floating_point() else t for name, t in state["global"]["model"].items()}
        exported = {"format": state["format"], "env": state["env"], "model_spec": state["model_spec"],
                    "global": {"model": model, "version": state["global"]["version"]},
                    "stats": {k: v for k, v in state.get("stats", {}).items() if k != "returns"}, "note": note}
    except Exception as err:
        raise _unusable(path, err) from None
    target = Path(target)
    return checkpoints.save(target.parent, exported, name=target.name, previous=None)


def record_video(policy: Policy, path: str | Path, episodes: int, greedy: bool, seed: int = 0,
                 frame_every: int = 1) -> list[float]:
    """Play and save the rendered frames (every `frame_every`-th agent step) as an animated GIF or an MP4."""
    sampler = FrameSampler(frame_every)
    returns = [play_episode(policy.env_id, policy.model, greedy, seed + i, on_frame=sampler, render_mode="rgb_array")
               for i in range(episodes)]
    write_video(sampler.frames, path, STEP_MS * frame_every)
    return returns
