"""`a3c export --format onnx`: the ONNX network gives torch's numbers on real observations, and `a3c play` and
`a3c evaluate` play the .onnx file as they play a checkpoint."""

import json
import re
import sys
import threading

import onnx
import pytest
import torch
from PIL import Image

from a3c.episodes import play_episode
from a3c.errors import UserFacingError
from apps import onnx_policy, playing
from tests.conftest import run_a3c

# Both sides compute in float32; only the order of the sums differs (oneDNN against onnxruntime's kernels), which
# moves logits of size ~10 by ~1e-6. 1e-4 leaves room for that and still catches a changed step (a frame left
# uncentered, say, moves them by far more).
TOLERANCE = dict(atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def pong_onnx(tmp_path_factory):
    """The shipped Pong model, exported to ONNX by the command a user runs."""
    path = tmp_path_factory.mktemp("onnx") / "pong.onnx"
    result = run_a3c("export", "--checkpoint", str(playing.SHIPPED), "--format", "onnx", "--output", str(path),
                     "--note", "shipped Pong", cwd=path.parent)
    assert result.returncode == 0, result.stderr
    return path


def observations_met(policy: playing.Policy, count: int, every: int = 1) -> torch.Tensor:
    """`count` observations the policy meets playing greedy episodes (seeds 0, 1, ...), one every `every` steps."""
    seen, enough = [], threading.Event()

    def recording(obs: torch.Tensor):
        seen.append(obs.clone())
        if len(seen) == count * every:
            enough.set()
        return policy.model(obs)

    seed = 0
    while not enough.is_set():
        play_episode(policy.env_id, recording, greedy=True, seed=seed, stop=enough)
        seed += 1
    return torch.cat(seen[::every])


def assert_same_outputs(torch_policy: playing.Policy, exported: playing.Policy, obs: torch.Tensor) -> None:
    with torch.no_grad():
        expected_logits, expected_values = torch_policy.model(obs)
    logits, values = exported.model(obs)
    torch.testing.assert_close(logits, expected_logits, **TOLERANCE)
    torch.testing.assert_close(values, expected_values, **TOLERANCE)
    assert torch.equal(logits.argmax(-1), expected_logits.argmax(-1))  # the greedy action, on every observation
    # One at a time too, as actors and `a3c play` call it.
    torch.testing.assert_close(exported.model(obs[:1])[0], expected_logits[:1], **TOLERANCE)


def test_onnx_pong_matches_torch_on_real_frames(pong_onnx):
    torch_policy, exported = playing.load_policy(), playing.load_policy(pong_onnx)
    assert (exported.env_id, exported.version, exported.spec) == (torch_policy.env_id, torch_policy.version,
                                                                 torch_policy.spec)
    assert onnx.load(pong_onnx).metadata_props[-1].value == "shipped Pong"
    frames = observations_met(torch_policy, 64, every=8)  # spread over the first 512 steps of a game
    assert frames.shape == (64, 4, 84, 84) and frames.dtype == torch.uint8
    with torch.no_grad():
        assert len(set(torch_policy.model(frames)[0].argmax(-1).tolist())) > 1  # frames that call for different moves
    assert_same_outputs(torch_policy, exported, frames)


def test_a_cartpole_network_from_a_learner_checkpoint_exports_and_matches(start_learner, tmp_path):
    checkpoint = start_learner().save_checkpoint()
    path = onnx_policy.export_onnx(checkpoint, tmp_path / "cartpole.onnx", note="")
    torch_policy, exported = playing.load_policy(checkpoint), playing.load_policy(path)
    assert exported.env_id == "CartPole-v1" and exported.spec == torch_policy.spec
    obs = observations_met(torch_policy, 64)
    assert obs.shape == (64, 4) and obs.dtype == torch.float32
    assert_same_outputs(torch_policy, exported, obs)


def test_evaluate_plays_the_onnx_file_as_the_checkpoint(start_learner, tmp_path):
    checkpoint = start_learner().save_checkpoint()
    path = onnx_policy.export_onnx(checkpoint, tmp_path / "cartpole.onnx", note="")
    result = run_a3c("evaluate", "--checkpoint", str(path), "--episodes", "2", "--seed", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = playing.evaluate(playing.load_policy(checkpoint), episodes=2, seed=5)
    assert report["env"] == "CartPole-v1" and report["greedy"] == expected["greedy"]


def test_play_records_pong_from_the_onnx_file(pong_onnx, tmp_path):
    video = tmp_path / "pong.gif"
    result = run_a3c("play", "--checkpoint", str(pong_onnx), "--video", str(video), "--frame-every", "8",
                     cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    returns = json.loads(re.search(r"returns (\[.*\])", result.stdout).group(1))
    torch_policy = playing.load_policy()
    assert returns == [play_episode(torch_policy.env_id, torch_policy.model, greedy=True, seed=0)]
    with Image.open(video) as image:
        assert image.format == "GIF" and image.n_frames > 50


def test_a_bad_onnx_file_or_name_gives_one_line(pong_onnx, tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx model")
    result = run_a3c("evaluate", "--checkpoint", str(tmp_path / "junk.onnx"), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"a3c: error: {tmp_path / 'junk.onnx'} is not a usable a3c checkpoint")

    result = run_a3c("export", "--checkpoint", str(playing.SHIPPED), "--format", "onnx", "--output", "x.pt",
                     cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "a3c: error: --format onnx writes a .onnx file, got --output 'x.pt'"


def test_an_onnx_model_without_a3c_metadata_is_refused(pong_onnx, tmp_path):
    model = onnx.load(pong_onnx)
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "anonymous.onnx")
    with pytest.raises(UserFacingError, match=r"anonymous.onnx is not a usable a3c checkpoint .*no a3c metadata"):
        playing.load_policy(tmp_path / "anonymous.onnx")
    with pytest.raises(UserFacingError, match=r"missing.onnx: no such ONNX policy"):
        playing.load_policy(tmp_path / "missing.onnx")


def test_without_onnxruntime_the_error_names_the_extra(monkeypatch, pong_onnx):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is absent
    with pytest.raises(UserFacingError, match=re.escape(onnx_policy.INSTALL_HINT)) as error:
        playing.load_policy(pong_onnx)
    assert "\n" not in str(error.value)
