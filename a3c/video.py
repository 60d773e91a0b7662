"""Rendered frames as a video: an animated GIF (what TensorBoard's image panel plays) or an MP4."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from a3c.errors import UserFacingError

VIDEO_SUFFIXES = (".gif", ".mp4")
# One agent step is 4 emulator frames at 60 Hz: about 67 ms of game time.
STEP_MS = 1000 * 4 / 60


class FrameSampler:
    """Keeps every `every`-th frame it is given (pass it as `on_frame`), up to `limit` frames."""

    def __init__(self, every: int = 1, limit: int | None = None) -> None:
        self.every, self.limit = every, limit
        self.frames: list[np.ndarray] = []
        self._count = 0

    def __call__(self, frame: np.ndarray) -> None:
        if self._count % self.every == 0 and (self.limit is None or len(self.frames) < self.limit):
            self.frames.append(frame)
        self._count += 1


def gif_bytes(frames: list[np.ndarray], frame_ms: float, scale: float = 1.0) -> bytes:
    """An animated GIF that loops, each frame shown `frame_ms`; `scale` < 1 shrinks it."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    if scale != 1.0:
        size = (max(1, round(images[0].width * scale)), max(1, round(images[0].height * scale)))
        images = [image.resize(size, Image.Resampling.NEAREST) for image in images]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=round(frame_ms), loop=0,
                   optimize=True)
    return out.getvalue()


def write_video(frames: list[np.ndarray], path: str | Path, frame_ms: float) -> None:
    """A .gif or .mp4 file of the frames."""
    if str(path).lower().endswith(".mp4"):
        import cv2

        height, width = frames[0].shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 1000 / frame_ms, (width, height))
        if not writer.isOpened():
            raise UserFacingError(f"cannot write an MP4 video to {path}")
        for frame in frames:
            writer.write(frame[:, :, ::-1])  # OpenCV wants BGR
        writer.release()
    else:
        Path(path).write_bytes(gif_bytes(frames, frame_ms))


