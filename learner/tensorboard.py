"""The learner's TensorBoard event files: the progress records' scalars and the evaluator's rounds and videos,
all against emulator frames (the x-axis runs are compared on)."""

from __future__ import annotations

import threading

from proto import a3c_pb2 as pb

# Progress record key -> TensorBoard tag.
PROGRESS_TAGS = {
    "mean_return": "train/mean_return", "staleness": "train/staleness", "actors": "train/actors",
    "frames_per_second": "speed/frames_per_second", "updates": "train/updates",
    "policy_loss": "loss/policy", "value_loss": "loss/value", "entropy": "loss/entropy", "grad_norm": "loss/grad_norm",
}
EVALUATION_TAGS = {"eval_mean_return": "eval/mean_return", "eval_min_return": "eval/min_return",
                   "eval_max_return": "eval/max_return", "eval_version": "eval/version"}
VIDEO_TAG = "eval/video"


def gif_size(gif: bytes) -> tuple[int, int]:
    """(width, height) from a GIF's logical screen descriptor."""
    return int.from_bytes(gif[6:8], "little"), int.from_bytes(gif[8:10], "little")


class TensorBoardLog:
    def __init__(self, directory: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported only when asked for: it takes a while

        self._writer = SummaryWriter(directory, flush_secs=10)
        self._lock = threading.Lock()  # progress from the learner's loop, evaluations from gRPC threads

    def progress(self, record: dict) -> None:
        self._scalars(PROGRESS_TAGS, record, record["frames"], record["time"])

    def evaluation(self, report: pb.EvaluationReport, summary: dict, frames: int) -> None:
        self._scalars(EVALUATION_TAGS, summary, frames)
        if report.video_gif:
            from tensorboard.compat.proto.summary_pb2 import Summary

            width, height = gif_size(report.video_gif)
            # What SummaryWriter.add_video writes, without its moviepy: TensorBoard's image panel plays a GIF.
            image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=report.video_gif)
            with self._lock:
                self._writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=VIDEO_TAG, image=image)]),
                                                            frames)

    def _scalars(self, tags: dict[str, str], values: dict, step: int, walltime: float | None = None) -> None:
        with self._lock:
            for key, tag in tags.items():
                if values.get(key) is not None:
                    self._writer.add_scalar(tag, values[key], step, walltime=walltime)

    def close(self) -> None:
        with self._lock:
            self._writer.close()
