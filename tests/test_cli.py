"""The `a3c` command as a user meets it: flags, A3C_* variables, and one-line errors instead of tracebacks."""

import argparse
import dataclasses

import pytest

from a3c import config
from apps.cli import build_parser
from tests.conftest import run_a3c


def parse(*argv, environ=None):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, config.ActorConfig, environ=environ or {})
    return config.from_args(config.ActorConfig, parser.parse_args(argv))


def test_defaults_flags_and_environment():
    assert parse().num_envs == config.ActorConfig().num_envs
    assert parse(environ={"A3C_NUM_ENVS": "3"}).num_envs == 3
    assert parse("--num-envs", "5", environ={"A3C_NUM_ENVS": "3"}).num_envs == 5  # the flag wins


def test_help_never_shows_a_token_from_the_environment(tmp_path):
    result = run_a3c("learner", "--help", env={"A3C_AUTH_TOKEN": "hunter2"}, cwd=tmp_path)
    assert result.returncode == 0 and "A3C_AUTH_TOKEN" in result.stdout and "hunter2" not in result.stdout


def test_bad_environment_value_names_the_variable():
    with pytest.raises(config.ConfigError, match="A3C_NUM_ENVS: expected int, got 'many'"):
        parse(environ={"A3C_NUM_ENVS": "many"})


def test_every_field_has_help_and_an_environment_variable():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    for name, cls in (("learner", config.LearnerConfig), ("actor", config.ActorConfig),
                      ("evaluator", config.EvaluatorConfig)):
        helps = {a.dest: a.help for a in sub[name]._actions}
        for f in dataclasses.fields(cls):
            assert f"A3C_{f.name.upper()}" in helps[f.name]


def test_config_round_trips_through_argv():
    original = config.LearnerConfig(env="CartPole-v1", lr=3e-4, t_max=20, max_grad_norm=40.0)
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, config.LearnerConfig, environ={})
    assert config.from_args(config.LearnerConfig, parser.parse_args(config.to_argv(original))) == original


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0), "--lr must be positive"),
    (dict(gamma=1.5), "--gamma must be in [0, 1]"),
    (dict(listen="nowhere"), "--listen must be HOST:PORT"),
    (dict(t_max=0), "--t-max must be at least 1"),
])
def test_invalid_values_are_refused_on_construction(kwargs, message):
    with pytest.raises(config.ConfigError) as err:
        config.LearnerConfig(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("argv, expected", [
    (["train", "--actors", "zero"], "invalid int value"),
    (["train", "--actors", "0"], "--actors must be at least 1"),
    (["train", "--no-such-flag"], "unrecognized arguments"),
    (["learner", "--optimizer", "lbfgs"], "invalid choice"),
    (["actor", "--learner", "localhost"], "--learner must be HOST:PORT"),
    (["evaluator", "--episodes", "0"], "--episodes must be 1 to 1000"),
    (["evaluator", "--nice", "20"], "--nice must be 0 to 19"),
    (["train", "--eval-interval", "-1"], "--eval-interval must not be negative"),
    (["export", "--checkpoint", "x", "--output", "x.pt", "--format", "onnx"], "--format onnx writes a .onnx file"),
    (["train", "--env", "NoSuchGame-v9"], "unknown environment 'NoSuchGame-v9'"),
    (["train", "--env", "Pendulum-v1"], "only discrete actions are supported"),
])
def test_bad_input_gives_one_line_and_no_traceback(argv, expected, tmp_path):
    result = run_a3c(*argv, cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "A.L.E" not in line and "Stella" not in line]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0] and "Traceback" not in result.stderr


def test_bad_environment_variable_gives_one_line(tmp_path):
    result = run_a3c("actor", env={"A3C_NUM_ENVS": "lots"}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "a3c: error: A3C_NUM_ENVS: expected int, got 'lots'"


@pytest.mark.parametrize("service", ["actor", "evaluator"])
def test_unreachable_learner_gives_one_line(tmp_path, service):
    result = run_a3c(service, "--learner", "127.0.0.1:1", "--connect-timeout", "1", "--metrics-port", "0",
                     cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "a3c: error: no learner answered at 127.0.0.1:1 within 1s"
    assert "Traceback" not in result.stderr


def test_metrics_port_in_use_gives_one_line(learner, tmp_path):
    result = run_a3c("learner", "--env", "CartPole-v1", "--listen", "127.0.0.1:0", "--metrics-port",
                     str(learner.metrics_port), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"a3c: error: cannot serve metrics on 0.0.0.0:{learner.metrics_port}")


def test_port_in_use_gives_one_line(learner, tmp_path):
    result = run_a3c("learner", "--env", "CartPole-v1", "--listen", f"127.0.0.1:{learner.port}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{learner.port}" in result.stderr and "Traceback" not in result.stderr
