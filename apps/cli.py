"""The `a3c` command: `learner` and `actor` run one service each; `train` runs them all as local processes."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

from a3c import config
from a3c.errors import UserFacingError
from a3c.wire import SERVICE_NAME
from apps.credentials import DEFAULT_HOSTS


class _Parser(argparse.ArgumentParser):
    """Bad flags get one line, not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _run_learner(args: argparse.Namespace) -> int:
    from learner.service import main

    return main(config.from_args(config.LearnerConfig, args))


def _run_actor(args: argparse.Namespace) -> int:
    from actor.service import main

    return main(config.from_args(config.ActorConfig, args))


def _run_evaluator(args: argparse.Namespace) -> int:
    from evaluator.service import main

    return main(config.from_args(config.EvaluatorConfig, args))


def _run_train(args: argparse.Namespace) -> int:
    from apps.local import train

    return train(config.from_args(config.RunLimits, args), config.from_args(config.LearnerConfig, args),
                 config.from_args(config.ActorConfig, args))


def _run_health(args: argparse.Namespace) -> int:
    from apps import health

    if args.grpc:
        health.check_grpc(args.grpc, args.service, args.timeout, args.tls_ca)
    else:
        health.check_http(args.http, args.timeout)
    return 0


def _run_credentials(args: argparse.Namespace) -> int:
    from pathlib import Path

    from apps import credentials

    if args.rotate_token and args.retire_old_tokens:
        raise config.ConfigError("--rotate-token and --retire-old-tokens go in two steps: rotate, let every actor "
                                 "pick up the new token, then retire")
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    if not hosts:
        raise config.ConfigError("--hosts must name at least one host")
    root = Path(args.directory)
    try:
        changes = credentials.ensure(root, hosts, args.rotate_token, args.retire_old_tokens)
    except OSError as err:
        raise UserFacingError(f"cannot write credentials in {root}: {err.strerror or err}") from None
    if args.kubernetes_secrets:
        print(credentials.kubernetes_secrets(root, args.namespace), end="")
    for change in changes or [f"{root}: every file present and valid"]:
        print(change, file=sys.stderr if args.kubernetes_secrets else sys.stdout)
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from apps import playing

    policy = playing.load_policy(args.checkpoint or playing.SHIPPED)
    print(playing.format_evaluation(policy, playing.evaluate(policy, args.episodes, args.seed)), flush=True)
    return 0


def _run_play(args: argparse.Namespace) -> int:
    from a3c.episodes import play_episode
    from a3c.video import VIDEO_SUFFIXES
    from apps import playing

    if args.video and not args.video.lower().endswith(VIDEO_SUFFIXES):
        raise config.ConfigError(f"--video must name a .gif or .mp4 file, got {args.video!r}")
    policy = playing.load_policy(args.checkpoint or playing.SHIPPED)
    if args.video:
        returns = playing.record_video(policy, args.video, args.episodes, greedy=not args.sample, seed=args.seed,
                                       frame_every=args.frame_every)
        print(f"wrote {args.video}: {len(returns)} episode(s), returns {returns}")
    else:
        for i in range(args.episodes):
            ret = play_episode(policy.env_id, policy.model, not args.sample, args.seed + i, render_mode=args.render)
            print(f"episode {i + 1}: return {ret:+.0f}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    # `play` and `evaluate` tell the two formats apart by the name, so the name must say which it is.
    onnx_name = args.output.lower().endswith(".onnx")
    if args.format == "onnx" and not onnx_name:
        raise config.ConfigError(f"--format onnx writes a .onnx file, got --output {args.output!r}")
    if args.format == "pt" and onnx_name:
        raise config.ConfigError(f"--output {args.output!r} names an ONNX file: add --format onnx, or name a .pt file")
    if args.format == "onnx":
        from apps.onnx_policy import export_onnx as export
    else:
        from apps.playing import export_policy as export
    print(f"wrote {export(args.checkpoint, args.output, args.note)}")
    return 0


def _run_plot(args: argparse.Namespace) -> int:
    from apps.curves import plot_runs

    for path in plot_runs(args.run_dirs, args.output_dir):
        print(f"wrote {path}")
    return 0


# Settings `a3c train` chooses itself for the processes it starts.
LOCAL_ONLY_LEARNER = ("listen", "checkpoint_dir", "progress_file", "port_file", "workers", "metrics_port",
                      "max_concurrent_rpcs", "auth_token", "auth_token_file", "allow_unauthenticated", "tls_cert",
                      "tls_key")
LOCAL_ONLY_ACTOR = ("learner", "actor_id", "metrics_port", "port_file", "auth_token", "auth_token_file", "tls_ca")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="a3c", description="Distributed A3C over gRPC: a learner service and scaled actors.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        return sub

    learner = command("learner", _run_learner, "serve the global network over gRPC and apply pushed gradients")
    config.add_arguments(learner, config.LearnerConfig)

    actor = command("actor", _run_actor, "play the environment and push gradients to a learner")
    config.add_arguments(actor, config.ActorConfig)

    evaluator = command("evaluator", _run_evaluator, "play greedy episodes on the learner's newest parameters: "
                        "metrics, best-eval.pt, videos, and a report to the learner for TensorBoard")
    config.add_arguments(evaluator, config.EvaluatorConfig)

    train = command("train", _run_train, "train on this machine: one learner and N actors as local processes")
    config.add_arguments(train, config.RunLimits)
    config.add_arguments(train, config.LearnerConfig, exclude=LOCAL_ONLY_LEARNER)
    config.add_arguments(train, config.ActorConfig, exclude=LOCAL_ONLY_ACTOR)
    evaluate = command("evaluate", _run_evaluate, "play greedy and sampled episodes with a checkpoint; print "
                       "mean, std, min and max return and one JSON line")
    evaluate.add_argument("--checkpoint", help="a checkpoint file, a checkpoint directory (its best.pt, else "
                          "latest.pt), or a .onnx file from `a3c export --format onnx`; default: the Pong model that "
                          "ships with a3c")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes per mode")
    evaluate.add_argument("--seed", type=int, default=0)

    play = command("play", _run_play, "watch a checkpoint play: record a GIF or MP4, or open a window")
    play.add_argument("--checkpoint", help="a checkpoint file or directory, or a .onnx file from `a3c export "
                      "--format onnx`; default: the shipped Pong model")
    play.add_argument("--video", help="write the episodes to this .gif or .mp4 file")
    play.add_argument("--render", choices=["human"], help="open a window (where a display exists)")
    play.add_argument("--episodes", type=int, default=1)
    play.add_argument("--sample", action="store_true", help="sample actions instead of taking the greedy one")
    play.add_argument("--frame-every", type=int, default=2, help="keep every Nth agent step in the video")
    play.add_argument("--seed", type=int, default=0)

    export = command("export", _run_export, "save a checkpoint's network alone to share or ship: float16 for a3c "
                     "(a few MB), or ONNX to serve with onnxruntime and no torch")
    export.add_argument("--checkpoint", required=True, help="a checkpoint file or directory (best.pt, else latest.pt)")
    export.add_argument("--output", required=True, help="the file to write (.onnx with --format onnx)")
    export.add_argument("--format", choices=["pt", "onnx"], default="pt", help="pt: a3c's own checkpoint format; "
                        "onnx: the forward pass in ONNX, float32, with a dynamic batch (default: %(default)s)")
    export.add_argument("--note", default="", help="how it was trained, kept in the file")

    plot = command("plot", _run_plot, "learning curves of one or more runs: mean return against frames and time")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (with progress.jsonl)")
    plot.add_argument("--output-dir", default=".", help="where to write the PNGs")

    check = command("health", _run_health, "exit 0 if a learner (gRPC health) or an actor (HTTP /metrics) is up")
    target = check.add_mutually_exclusive_group(required=True)
    target.add_argument("--grpc", metavar="HOST:PORT", help="check the gRPC health service of a learner")
    target.add_argument("--http", metavar="URL", help="check that an HTTP endpoint (an actor's /metrics) answers")
    check.add_argument("--service", default=SERVICE_NAME, help="gRPC service name to check")
    check.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    check.add_argument("--tls-ca", default="", metavar="FILE", help="check over TLS, trusting this CA certificate")

    made = command("credentials", _run_credentials, "make (or renew) the tokens and TLS certificates a deployment "
                   "runs with, or rotate its token")
    made.add_argument("directory", metavar="DIR", help="where they live: DIR/ca, DIR/learner, DIR/actor")
    made.add_argument("--hosts", default=",".join(DEFAULT_HOSTS),
                      help="comma-separated names and addresses the learner's certificate covers (default: %(default)s)")
    made.add_argument("--rotate-token", action="store_true", help="make a new token that actors present from now "
                      "on; the learner accepts the old ones too until --retire-old-tokens")
    made.add_argument("--retire-old-tokens", action="store_true", help="accept only the newest token")
    made.add_argument("--kubernetes-secrets", action="store_true",
                      help="print the files as two Secrets, for kubectl apply -f -")
    made.add_argument("--namespace", default="a3c", help="namespace of the Secrets (default: %(default)s)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)-7s %(message)s", datefmt="%H:%M:%S")
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UserFacingError as err:
        print(f"a3c: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, config.ConfigError) else 1
    except KeyboardInterrupt:
        return 130
