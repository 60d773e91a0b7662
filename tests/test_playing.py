"""What a user does with a trained network: evaluate it, watch it, plot the run's curves, keep the best one."""

import json

import cv2
import pytest
import torch
from PIL import Image

from a3c import checkpoints
from apps import playing
from apps.curves import evaluation_rounds
from tests.conftest import run_a3c


def test_evaluate_prints_statistics_and_one_json_line(start_learner, tmp_path):
    learner = start_learner()
    path = learner.save_checkpoint()
    result = run_a3c("evaluate", "--checkpoint", str(path), "--episodes", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("CartPole-v1, network version 0")
    report = json.loads(lines[-1])
    for mode in ("greedy", "sampled"):
        assert report[mode]["episodes"] == 3
        assert report[mode]["min"] <= report[mode]["mean"] <= report[mode]["max"]


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_play_records_a_video_of_pong(start_learner, tmp_path, suffix):
    learner = start_learner(env="PongNoFrameskip-v4")
    learner.save_checkpoint()
    video = tmp_path / f"pong{suffix}"
    result = run_a3c("play", "--checkpoint", str(tmp_path / "checkpoints"), "--video", str(video),
                     "--frame-every", "8", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    if suffix == ".gif":
        with Image.open(video) as image:
            assert image.format == "GIF" and image.size == (160, 210) and image.n_frames > 50
    else:
        capture = cv2.VideoCapture(str(video))
        ok, frame = capture.read()
        assert ok and frame.shape == (210, 160, 3) and frame.max() > 0
        assert capture.get(cv2.CAP_PROP_FRAME_COUNT) > 50
        capture.release()


def test_export_keeps_the_policy_in_a_small_file(start_learner, tmp_path):
    learner = start_learner(env="PongNoFrameskip-v4")
    learner.save_checkpoint()
    exported = tmp_path / "shared" / "pong.pt"
    result = run_a3c("export", "--checkpoint", str(tmp_path / "checkpoints"), "--output", str(exported),
                     "--note", "a test", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert exported.stat().st_size < 0.6 * (tmp_path / "checkpoints" / "latest.pt").stat().st_size
    assert {t.dtype for t in checkpoints.load(exported)["global"]["model"].values()} == {torch.float16}
    original, copy = playing.load_policy(tmp_path / "checkpoints"), playing.load_policy(exported)
    assert checkpoints.load(exported)["note"] == "a test" and copy.env_id == "PongNoFrameskip-v4"
    obs = torch.randint(0, 255, (3, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(copy.model(obs)[0], original.model(obs)[0], atol=2e-3, rtol=0)


def test_a_bad_checkpoint_or_video_name_gives_one_line(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    result = run_a3c("evaluate", "--checkpoint", str(tmp_path / "junk.pt"), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("a3c: error: ")
    assert result.stderr.strip().splitlines()[-1].endswith(
        "junk.pt is not a usable a3c checkpoint: it does not load as tensors and plain values")
    result = run_a3c("play", "--checkpoint", str(tmp_path / "junk.pt"), "--video", "out.avi", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "a3c: error: --video must name a .gif or .mp4 file, got 'out.avi'"


def test_plot_draws_every_run_in_one_figure(tmp_path):
    for run, slope in (("seed0", 1.0), ("seed1", 2.0)):
        (tmp_path / run).mkdir()
        records = [{"seconds": 10.0 * i, "frames": 1000 * i, "mean_return": -21 + slope * i} for i in range(10)]
        (tmp_path / run / "progress.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{torn")
    result = run_a3c("plot", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--output-dir", str(tmp_path / "out"),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("return_vs_frames.png", "return_vs_time.png"):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == "PNG" and image.size[0] > 400
            colors = {color for _, color in image.convert("RGB").getcolors(maxcolors=1 << 16)}
        # One line per run, in matplotlib's first two colors.
        assert {(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)} <= colors


def test_plot_draws_each_evaluation_round_once():
    records = [{"frames": i, "eval_mean_return": None, "eval_version": None} for i in range(2)]
    records += [{"frames": 2 + i, "eval_mean_return": 5.0, "eval_version": 7} for i in range(3)]  # repeated
    records += [{"frames": 5, "eval_mean_return": 9.0, "eval_version": 12}]
    assert [r["frames"] for r in evaluation_rounds(records)] == [2, 5]


def test_the_learner_keeps_its_best_network(learner):
    best = checkpoints.BEST
    for value in [1.0] * 100:
        learner.stats.record_rollout(1, 1, [value])
    learner.report()
    saved = checkpoints.load(f"{learner.config.checkpoint_dir}/{best}")
    assert saved["stats"]["best_mean_return"] == 1.0
    for value in [0.0] * 100:  # a worse window does not overwrite it
        learner.stats.record_rollout(1, 1, [value])
    learner.report()
    kept = checkpoints.load(f"{learner.config.checkpoint_dir}/{best}")["stats"]
    assert kept["best_mean_return"] == 1.0 and kept["returns"] == [1.0] * 100


@pytest.mark.slow
def test_the_shipped_pong_model_wins(tmp_path):
    """Right after install, `a3c evaluate` with no checkpoint plays the shipped model, and it wins."""
    assert playing.SHIPPED.stat().st_size < 4_000_000
    result = run_a3c("evaluate", "--episodes", "2", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["env"] == "PongNoFrameskip-v4"
    assert report["greedy"]["mean"] > 15 and report["sampled"]["mean"] > 15, report
    assert checkpoints.load(playing.SHIPPED)["note"]  # says how it was trained
