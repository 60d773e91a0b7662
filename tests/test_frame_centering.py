"""Centered Atari frames: the uniform background moves no first-layer weight, and the setting travels with the run."""

import pytest
import torch

from a3c import checkpoints
from a3c.envs import describe_env
from a3c.model import ModelSpec, build_model
from learner.service import LearnerError

PONG_NET = ModelSpec("cnn", (4, 84, 84), 6, center_frames=True)


def _frames(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(20, 200, (5, 4, 84, 84), generator=generator, dtype=torch.uint8)


def test_a_centered_network_sees_the_same_frames_at_any_brightness():
    frames = _frames(0)
    centered, plain = build_model(PONG_NET), build_model(ModelSpec("cnn", (4, 84, 84), 6))
    for got, want in zip(centered(frames + 40), centered(frames)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain(frames + 40)[1], plain(frames)[1])


def test_a_uniform_background_gives_the_first_layer_weights_no_gradient():
    # The mechanism that killed 15 of 16 conv1 channels: every weight got the background's gradient.
    background = torch.full((3, 4, 84, 84), 87, dtype=torch.uint8)  # Pong's gray background
    for spec, expect_zero in ((PONG_NET, True), (ModelSpec("cnn", (4, 84, 84), 6), False)):
        model = build_model(spec)
        with torch.no_grad():
            model.torso.conv1.bias.fill_(0.1)  # the units are alive on the background
        logits, value = model(background)
        (value.sum() + logits[:, 0].sum()).backward()
        grad = model.torso.conv1.weight.grad
        assert (grad.abs().max() == 0) == expect_zero, spec


def test_the_learner_centers_atari_frames_only_and_tells_its_actors(start_learner, tmp_path):
    pong = start_learner(env="PongNoFrameskip-v4", checkpoint_dir=str(tmp_path / "pong"))
    assert pong.model_spec.center_frames
    assert ModelSpec.from_message(pong.run_spec.model) == pong.model_spec  # what an actor builds from GetRunSpec
    cartpole = start_learner(env="CartPole-v1", checkpoint_dir=str(tmp_path / "cartpole"))
    assert not cartpole.model_spec.center_frames and not cartpole.run_spec.model.center_frames
    assert ModelSpec.for_env(describe_env("PongNoFrameskip-v4"), False).center_frames is False


def test_a_checkpoint_resumes_only_with_the_centering_it_was_trained_with(start_learner, tmp_path):
    directory = str(tmp_path / "run")
    start_learner(env="PongNoFrameskip-v4", checkpoint_dir=directory).save_checkpoint()
    with pytest.raises(LearnerError, match="resume it with --center-frames"):
        start_learner(env="PongNoFrameskip-v4", checkpoint_dir=directory, center_frames=False)

    # A checkpoint from before the setting existed holds an uncentered network and no such field.
    state = checkpoints.load(f"{directory}/{checkpoints.LATEST}")
    state["model_spec"].pop("center_frames")
    checkpoints.save(directory, state)
    with pytest.raises(LearnerError, match="resume it with --no-center-frames"):
        start_learner(env="PongNoFrameskip-v4", checkpoint_dir=directory)
    resumed = start_learner(env="PongNoFrameskip-v4", checkpoint_dir=directory, center_frames=False)
    assert resumed.resumed_from is not None and not resumed.model_spec.center_frames


def test_a_checkpoint_of_another_format_is_refused_not_misread(start_learner, tmp_path):
    directory = str(tmp_path / "run")
    start_learner(checkpoint_dir=directory).save_checkpoint()
    state = checkpoints.load(f"{directory}/{checkpoints.LATEST}")
    state["format"] += 1
    checkpoints.save(directory, state, previous=None)
    with pytest.raises(LearnerError, match="is a checkpoint of format 2; this learner reads format 1"):
        start_learner(checkpoint_dir=directory)
