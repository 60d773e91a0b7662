"""Typed, validated configuration for every service, settable by flag or by `A3C_*` environment variable.

Each field's `help` is its documentation; the same text appears in `--help`. A container sets the field
`num_envs` as `A3C_NUM_ENVS`; a flag on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from a3c.errors import UserFacingError
from a3c.tokens import TokenFileError, read_token_file

ENV_PREFIX = "A3C_"
OPTIMIZERS = ("rmsprop", "torch-rmsprop", "adam", "sgd")
WIRE_DTYPES = ("float32", "float16", "bfloat16", "int8")
ENV_BACKENDS = ("auto", "ale-vector", "gymnasium")
CONV_PRECISIONS = ("auto", "float32", "bfloat16")
KEEP_FREED_MEMORY_HELP = ("keep freed push buffers in the process instead of returning them to the kernel after "
                          "every push (glibc only)")


class ConfigError(UserFacingError, ValueError):
    """A setting is invalid; the message names it and says why, in one line."""


def option(default: Any, help: str, *, choices: Optional[Iterable[str]] = None, secret: bool = False) -> Any:
    """A config field; `secret` keeps its value (perhaps from the environment) out of --help."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None,
                                            "secret": secret})


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_address(name: str, address: str) -> None:
    host, sep, port = address.rpartition(":")
    _require(bool(sep) and bool(host) and port.isdigit() and 0 <= int(port) <= 65535,
             f"--{name.replace('_', '-')} must be HOST:PORT with a port in 0-65535, got {address!r}")


def _check_readable(name: str, path: str) -> None:
    _require(not path or os.access(path, os.R_OK), f"--{name.replace('_', '-')}: cannot read {path!r}")


def _check_token_source(literal: str, path: str) -> None:
    _require(not (literal and path), "--auth-token and --auth-token-file exclude each other")
    if path:
        try:
            read_token_file(path)
        except TokenFileError as err:
            raise ConfigError(f"--auth-token-file: {err}") from None


def _is_loopback(host: str) -> bool:
    """`host` (a --listen host) answers only on this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(name: str, port: int) -> None:
    _require(0 <= port <= 65535, f"--{name.replace('_', '-')} must be in 0-65535, got {port}")


# The most environments one actor steps: the learner refuses a push claiming a rollout of more.
MAX_NUM_ENVS = 1024
# The most episodes in one evaluation round: the learner refuses a report of more.
MAX_EVAL_EPISODES = 1000

@dataclass(frozen=True)
class HyperParams:
    """The A3C settings the learner owns; actors receive the rollout part of them over the wire."""

    env: str = option("PongNoFrameskip-v4", "environment id (any ALE game such as PongNoFrameskip-v4, or a "
                      "vector-observation env such as CartPole-v1)")
    optimizer: str = option("rmsprop", "optimizer of the global network: rmsprop is TensorFlow's form (mean "
                            "square starting at one, eps inside the root), torch-rmsprop PyTorch's; its statistics "
                            "live in the learner, so all actors share them", choices=OPTIMIZERS)
    lr: float = option(7e-4, "learning rate")
    rmsprop_alpha: float = option(0.99, "RMSProp smoothing constant")
    optim_eps: float = option(1e-10, "epsilon of the optimizer: inside the square root for rmsprop, outside "
                              "it for torch-rmsprop and adam (1e-10 inside is about 1e-5 outside)")
    t_max: int = option(20, "rollout length per environment, in agent steps, before each gradient push")
    gamma: float = option(0.99, "discount factor")
    entropy_coef: float = option(0.01, "weight of the entropy bonus")
    value_coef: float = option(0.5, "weight of the value loss")
    max_grad_norm: float = option(0.5, "actors clip each gradient to this L2 norm before pushing it")
    max_staleness: int = option(64, "refuse gradients computed on parameters more than this many versions old")
    center_frames: bool = option(True, "subtract each Atari frame's mean brightness before the first convolution, "
                                 "so that no first-layer unit can die on the uniform background")
    wire_dtype: str = option("float16", "dtype of parameters and gradients on the wire (the learner keeps float32)",
                             choices=WIRE_DTYPES)
    seed: int = option(0, "random seed (network initialisation on the learner, environments on actors)")

    def __post_init__(self) -> None:
        _require(bool(self.env.strip()), "--env must not be empty")
        _require(self.lr > 0, f"--lr must be positive, got {self.lr}")
        _require(0 < self.rmsprop_alpha < 1, f"--rmsprop-alpha must be in (0, 1), got {self.rmsprop_alpha}")
        _require(self.optim_eps > 0, f"--optim-eps must be positive, got {self.optim_eps}")
        _require(self.t_max >= 1, f"--t-max must be at least 1, got {self.t_max}")
        _require(0 <= self.gamma <= 1, f"--gamma must be in [0, 1], got {self.gamma}")
        _require(self.entropy_coef >= 0, f"--entropy-coef must not be negative, got {self.entropy_coef}")
        _require(self.value_coef >= 0, f"--value-coef must not be negative, got {self.value_coef}")
        _require(self.max_grad_norm > 0, f"--max-grad-norm must be positive, got {self.max_grad_norm}")
        _require(self.max_staleness >= 0, f"--max-staleness must not be negative, got {self.max_staleness}")


@dataclass(frozen=True)
class LearnerConfig(HyperParams):
    """The learner service."""

    listen: str = option("0.0.0.0:50051", "HOST:PORT to serve gRPC on (port 0 picks a free port)")
    checkpoint_dir: str = option("checkpoints", "directory for checkpoints")
    checkpoint_interval: float = option(300.0, "seconds between checkpoints (0 disables periodic ones)")
    progress_file: str = option("", "append a JSON line of training progress here every --log-interval")
    port_file: str = option("", 'once serving, write the bound ports to this file as JSON, {"grpc": N, '
                            '"metrics": M} (for launchers that start it on port 0)')
    log_interval: float = option(5.0, "seconds between progress lines")
    tensorboard: str = option("", "write TensorBoard event files here: the progress record's scalars every "
                              "--log-interval and the evaluator's returns and videos (a3c train: RUN_DIR/tensorboard)")
    workers: int = option(1, "gRPC server worker threads (of each front with --frontends): one is the fastest, "
                          "since gradients are applied one at a time anyway and more threads only contend for "
                          "Python's GIL")
    frontends: int = option(0, "processes that serve gRPC on the learner's port (SO_REUSEPORT): they receive, check "
                            "and decode pushes and encode replies, and this process only applies them. Pays on a "
                            "learner host with cores to spare; 0: this process serves alone")
    metrics_port: int = option(9400, "port of the Prometheus /metrics endpoint (0 picks a free port)")
    keep_freed_memory: bool = option(True, KEEP_FREED_MEMORY_HELP)
    max_concurrent_rpcs: int = option(256, "calls served at once; more get RESOURCE_EXHAUSTED, not unbounded memory")
    auth_token: str = option("", "require this bearer token from every caller (the health service stays open)",
                             secret=True)
    auth_token_file: str = option("", "require one of the bearer tokens in this file (one per line) from every "
                                  "caller; reread when it changes, so tokens rotate without a restart")
    allow_unauthenticated: bool = option(False, "serve without a token on an address other machines can reach "
                                         "(without this, a learner listening beyond loopback needs a token)")
    tls_cert: str = option("", "PEM certificate chain to serve TLS with (needs --tls-key)")
    tls_key: str = option("", "PEM private key of --tls-cert")
    refusal_limit: int = option(20, "invalid pushes one actor may send within a minute; one more and its pushes are "
                                "refused outright for --refusal-cooldown seconds (0: no limit)")
    refusal_cooldown: float = option(60.0, "seconds an actor over --refusal-limit is refused")
    max_episode_return: float = option(0.0, "refuse pushes reporting an episode whose return is further from 0 "
                                       "than this; 0: the environment's own bound (Pong 21, CartPole its step "
                                       "limit; none for others)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_address("listen", self.listen)
        _require(self.checkpoint_interval >= 0, "--checkpoint-interval must not be negative")
        _require(self.log_interval > 0, f"--log-interval must be positive, got {self.log_interval}")
        _require(self.workers >= 1, f"--workers must be at least 1, got {self.workers}")
        _require(self.frontends >= 0, f"--frontends must not be negative, got {self.frontends}")
        _check_port("metrics_port", self.metrics_port)
        _require(self.max_concurrent_rpcs >= 1, "--max-concurrent-rpcs must be at least 1")
        _require(self.max_episode_return >= 0, "--max-episode-return must not be negative")
        _require(self.refusal_limit >= 0, "--refusal-limit must not be negative")
        _require(self.refusal_cooldown > 0, "--refusal-cooldown must be positive")
        _require(bool(self.tls_cert) == bool(self.tls_key), "--tls-cert and --tls-key go together")
        for name in ("tls_cert", "tls_key"):
            _check_readable(name, getattr(self, name))
        _check_token_source(self.auth_token, self.auth_token_file)

    @property
    def exposed(self) -> bool:
        """Whether other machines can reach --listen."""
        return not _is_loopback(self.listen.rpartition(":")[0])

    def require_token_if_exposed(self) -> None:
        """Secure by default: a learner other machines can reach serves only with a token, unless told not to."""
        _require(bool(self.auth_token or self.auth_token_file) or self.allow_unauthenticated or not self.exposed,
                 f"--listen {self.listen} can be reached from other machines and no --auth-token-file is given, so "
                 f"anyone could push gradients: give one (`a3c credentials DIR` makes one) or pass "
                 f"--allow-unauthenticated")


@dataclass(frozen=True)
class LearnerLink:
    """How a service reaches the learner (the actor's and the evaluator's settings alike)."""

    learner: str = option("localhost:50051", "HOST:PORT of the learner")
    connect_timeout: Optional[float] = option(None, "seconds to keep trying to reach the learner, at start and after "
                                              "losing it, before giving up (default: as long as it takes)")
    rpc_timeout: float = option(10.0, "deadline of each call to the learner, in seconds")
    auth_token: str = option("", "bearer token to present to the learner", secret=True)
    auth_token_file: str = option("", "present the first token in this file to the learner; reread when it "
                                  "changes, so tokens rotate without a restart")
    tls_ca: str = option("", "PEM CA certificate to trust: connect to the learner over TLS")
    port_file: str = option("", 'once serving metrics, write the bound port to this file as JSON, {"metrics": M} '
                            '(for launchers that start it on port 0)')

    def __post_init__(self) -> None:
        _check_address("learner", self.learner)
        _require(self.connect_timeout is None or self.connect_timeout > 0, "--connect-timeout must be positive")
        _require(self.rpc_timeout > 0, "--rpc-timeout must be positive")
        _check_readable("tls_ca", self.tls_ca)
        _check_token_source(self.auth_token, self.auth_token_file)


@dataclass(frozen=True)
class ActorConfig(LearnerLink):
    """One actor process: everything else comes from the learner."""

    num_envs: int = option(8, "environments stepped together in this process (batched inference)")
    keep_freed_memory: bool = option(True, KEEP_FREED_MEMORY_HELP)
    overlap_pushes: bool = option(False, "collect the next rollout while the learner answers the last push: no "
                                  "waiting on the wire, but each gradient is one push staler")
    env_backend: str = option("auto", "how the environments are stepped: ale-vector (ale-py's C++ vector env, "
                              "ALE games only), gymnasium (Python wrappers), or auto (ale-vector where it can)",
                              choices=ENV_BACKENDS)
    conv_precision: str = option("auto", "precision of the Atari network's convolutions on this actor (weights, "
                                 "gradients and dense layers stay float32): bfloat16 takes a fifth less time where the "
                                 "CPU has native bfloat16 (AVX512-BF16 or AMX), which auto picks; float32 elsewhere",
                                 choices=CONV_PRECISIONS)
    seed: Optional[int] = option(None, "random seed for this actor's environments and action sampling (default: "
                                 "derived from the actor's name, so that replicas play different episodes)")
    actor_id: str = option("", "name reported to the learner (default: host name and process id; a container's "
                           "host name is its own)")
    metrics_port: int = option(9401, "port of the Prometheus /metrics endpoint (0 picks a free port)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(1 <= self.num_envs <= MAX_NUM_ENVS, f"--num-envs must be 1 to {MAX_NUM_ENVS}, got {self.num_envs}")
        _require(self.conv_precision in CONV_PRECISIONS, f"--conv-precision must be one of "
                 f"{', '.join(CONV_PRECISIONS)}, got {self.conv_precision!r}")
        _check_port("metrics_port", self.metrics_port)


@dataclass(frozen=True)
class EvaluatorConfig(LearnerLink):
    """The evaluator: greedy episodes on the learner's newest parameters, in rounds."""

    episodes: int = option(10, "greedy episodes per round, all on one version of the parameters: the metrics, the "
                           "report to the learner and best-eval.pt take their mean, min and max")
    interval: float = option(30.0, "seconds from the start of one round to the start of the next, at least; a round "
                             "starts only once the learner's version has moved")
    output_dir: str = option("evaluation", "where best-eval.pt (the network of the best round so far) and the "
                             "videos/ go")
    video_interval: float = option(300.0, "seconds between recorded videos, each the start of one round's first "
                                   "episode (0: none)")
    video_steps: int = option(600, "agent steps a video covers at most (600: 40 s of Pong)")
    videos_kept: int = option(20, "the newest videos kept in OUTPUT_DIR/videos; older ones are removed")
    nice: int = option(10, "niceness this process adds to itself, so that actors sharing its cores go first")
    seed: int = option(0, "seed of the first episode; each later episode takes the next")
    evaluator_id: str = option("", "name reported to the learner (default: host name and process id)")
    metrics_port: int = option(9402, "port of the Prometheus /metrics endpoint (0 picks a free port)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(1 <= self.episodes <= MAX_EVAL_EPISODES,
                 f"--episodes must be 1 to {MAX_EVAL_EPISODES}, got {self.episodes}")
        _require(self.interval >= 0, f"--interval must not be negative, got {self.interval}")
        _require(self.video_interval >= 0, f"--video-interval must not be negative, got {self.video_interval}")
        _require(self.video_steps >= 1, f"--video-steps must be at least 1, got {self.video_steps}")
        _require(self.videos_kept >= 1, f"--videos-kept must be at least 1, got {self.videos_kept}")
        _require(0 <= self.nice <= 19, f"--nice must be 0 to 19, got {self.nice}")
        _check_port("metrics_port", self.metrics_port)


@dataclass(frozen=True)
class RunLimits:
    """When `a3c train` stops and what it counts as success."""

    actors: int = option(os.cpu_count() or 1, "actor processes to start (default: the machine's core count)")
    max_seconds: Optional[float] = option(None, "stop after this many seconds of training")
    max_frames: Optional[int] = option(None, "stop after this many emulator frames")
    stop_at_return: Optional[float] = option(None, "stop with success once the mean return of the last 100 "
                                             "episodes reaches this; exit non-zero if it is never reached")
    run_dir: str = option("", "directory for this run's progress and checkpoints (default: runs/TIME-ENV)")
    evaluator: bool = option(False, "also run an evaluator: rounds of 10 greedy episodes on the newest parameters, "
                             "best-eval.pt and videos in RUN_DIR/evaluation, its returns in the progress records "
                             "and TensorBoard")
    eval_interval: float = option(30.0, "with --evaluator: seconds from one round's start to the next's, at least")

    def __post_init__(self) -> None:
        _require(self.actors >= 1, f"--actors must be at least 1, got {self.actors}")
        _require(self.max_seconds is None or self.max_seconds > 0, "--max-seconds must be positive")
        _require(self.max_frames is None or self.max_frames > 0, "--max-frames must be positive")
        _require(self.eval_interval >= 0, f"--eval-interval must not be negative, got {self.eval_interval}")


# --- flags and environment variables, derived from the dataclasses above -------------------------------

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _value_type(cls: type, name: str) -> type:
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _parse(kind: type, text: str, source: str) -> Any:
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{source}: expected true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{source}: expected {kind.__name__}, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = (),
                  environ: Optional[dict[str, str]] = None) -> None:
    """Add one flag per field of the dataclass `cls`, defaulting to its `A3C_*` variable, else its default.

    Fields already on the parser (a name shared by two configs, such as `seed`) are added once.
    """
    environ = os.environ if environ is None else environ
    existing = {action.dest for action in parser._actions}
    for f in dataclasses.fields(cls):
        if f.name in exclude or f.name in existing:
            continue
        kind = _value_type(cls, f.name)
        default = f.default
        if _env_name(f.name) in environ:
            default = _parse(kind, environ[_env_name(f.name)], _env_name(f.name))
        shown = "hidden" if f.metadata["secret"] else "unset" if default in ("", None) else "%(default)s"
        help_text = f"{f.metadata['help']} [env {_env_name(f.name)}; default: {shown}]"
        if kind is bool:
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        else:
            parser.add_argument(_flag(f.name), dest=f.name, type=kind, default=default,
                                choices=f.metadata["choices"], metavar=None if f.metadata["choices"] else f.name.upper(),
                                help=help_text)


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build (and so validate) `cls` from the parsed flags that match its fields."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def to_argv(config: Any, *, only: Optional[Iterable[str]] = None) -> list[str]:
    """The command-line flags that rebuild `config` (or the named fields of it) in another process."""
    wanted = set(only) if only is not None else None
    argv: list[str] = []
    for f in dataclasses.fields(config):
        if wanted is not None and f.name not in wanted:
            continue
        value = getattr(config, f.name)
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(_flag(f.name) if value else "--no-" + f.name.replace("_", "-"))
        else:
            argv += [_flag(f.name), repr(value) if isinstance(value, float) else str(value)]
    return argv
