"""Command line: parse arguments, call library functions, turn user mistakes into one line and exit 2."""

from __future__ import annotations

import argparse
import faulthandler
import io
import logging
import os
import signal
import sys

from boneage_core import BoneAgeError
from search.bench import DEFAULT_POSTGRES_URL

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (what kill, systemd and batch schedulers send) ends the work as Ctrl-C does: the trial
    in progress is failed, the study stays consistent, workers are told to stop."""


def _raise_terminated(signum, frame):
    raise Terminated()


class _BarAwareHandler(logging.Handler):
    """Warnings on a line of their own above any progress bar (tqdm.write), never glued to its end."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


class Parser(argparse.ArgumentParser):
    """Options spelled out in full (no abbreviations: `--stor=URL` is refused, never taken for --storage),
    and a mistake said in one line with any URL in it redacted."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2, instead of usage + message
        from search.storage.study import redact_text

        print(f"error: {redact_text(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seed_int(text: str) -> int:
    """A seed as numpy and Optuna take it: a whole number in [0, 2^32)."""
    value = whole_number(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"a seed must lie in [0, 2^32), got {value}")
    return value


def port_int(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port lies in 1..65535, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _common_options() -> Parser:
    """What every study command takes."""
    common = Parser(add_help=False)
    common.add_argument(
        "--study",
        help="a study name (./studies/NAME.toml, else the packaged one, else a study already in the storage) "
        "or a path to a TOML file (default: demo); the file is read to create a study, the study is read after",
    )
    common.add_argument("--storage", help="SQLAlchemy URL of the study storage (default: sqlite:///studies/<study>.db)")
    common.add_argument(
        "--data",
        help="directory with RSNA data as downloaded (same as --set data.source=DIR); for an existing study, "
        "where its data lies now (the data's fingerprint must match)",
    )
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a study field when creating a study, repeatable (e.g. --set train.epochs=3); an "
        "existing study keeps its data, fixed training fields, space, sampler, pruner and baseline, and "
        "refuses a change to them (device and heartbeat stay free)",
    )
    common.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    return common


def get_args_parser() -> Parser:
    common = _common_options()
    parser = Parser(prog="python -m search", description="Tune and benchmark bone-age models with Optuna.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", parents=[common], help="search until the study holds N finished trials")
    run.add_argument(
        "--trials", type=positive_int, default=50, help="finished trials the study should hold (default 50)"
    )
    run.add_argument("--workers", type=positive_int, default=1, help="worker processes on this machine (default 1)")
    run.add_argument("--timeout", type=positive_float, help="stop starting new trials after this many seconds")
    bl = sub.add_parser(
        "baseline", parents=[common], help="train the baseline on an existing study's data and record it"
    )
    bl.add_argument(
        "--seeds", type=positive_int, default=3, help="seeds; the recorded val MAE is their mean (default 3)"
    )
    rt = sub.add_parser(
        "retrain",
        parents=[common],
        help="best params (with --top-k the K best and their ensemble) and the baseline on train+val -> "
        "test MAE; --set train.* changes the tuned recipes only, --set baseline.* the baseline only",
    )
    rt.add_argument(
        "--seeds",
        type=positive_int,
        default=3,
        help="seeds per recipe (default 3); the verdict needs 2 or more, since it resamples seeds",
    )
    rt.add_argument("--tta", action="store_true", help="also report test-time horizontal-flip averaging (both recipes)")
    rt.add_argument(
        "--top-k",
        type=positive_int,
        default=1,
        metavar="K",
        help="also retrain the K best distinct configurations and score their average, the top-K ensemble (default 1)",
    )
    rt.add_argument(
        "--bias-correction",
        action="store_true",
        help="also score the best (and the ensemble) with a linear correction fitted on the trials' val predictions",
    )
    sub.add_parser(
        "report", parents=[common], help="results/<study>/index.html (the report, figures inline), summary.md and more"
    )
    sub.add_parser(
        "status", parents=[common], help="trials by state, best so far, the baseline, the final test, time spent"
    )
    dash = sub.add_parser(
        "dashboard", parents=[common], help="optuna-dashboard on the study storage, with the files retrain attached"
    )
    dash.add_argument("--port", type=port_int, default=8080)
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")

    _tool_parsers(sub)
    return parser


def _tool_parsers(sub) -> None:
    """The commands that need no study: bench and data."""
    bench = sub.add_parser("bench", help="the performance benchmarks: figures to results/bench/")
    bench.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes (what CI runs)")
    bench.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    bench.add_argument(
        "--out",
        help="output directory (default results/bench; with --quick results/bench-quick, with --only "
        "results/bench-partial)",
    )
    bench.add_argument(
        "--only",
        help="comma-separated benchmarks: data_path, training_overhead, "
        "search_efficiency, storage, gpu_throughput (default all)",
    )
    bench.add_argument("--search-trials", type=positive_int, help="trials per search arm (default 30; quick 2)")
    bench.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES_URL,
        help="a PostgreSQL URL whose server may host a scratch database for the storage benchmark",
    )

    data = sub.add_parser("data", help="make the phantom, check or cache a data directory")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    mk = data_sub.add_parser("make-phantom", help="write the embedded synthetic dataset in the Kaggle layout")
    mk.add_argument("out", help="a new or empty directory")
    mk.add_argument("--n", type=positive_int, default=1000, help="number of images (default 1000)")
    mk.add_argument("--seed", type=seed_int, default=0)
    ck = data_sub.add_parser(
        "check",
        help="what a data directory holds: every split, every image that cannot be used (exit 2: a broken download)",
    )
    ck.add_argument("dir")
    ca = data_sub.add_parser("cache", help="decode a data directory once into the image cache, a file per split")
    ca.add_argument("dir")
    ca.add_argument("--size", type=positive_int, default=64, help="side of the cached images, 32 to 1024 px")
    ca.add_argument("--seed", type=seed_int, default=0, help="seed of the train/val/test split")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID` prints every thread's stack: what a stuck run waits on
        try:
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        except (ValueError, io.UnsupportedOperation):  # stderr is no file (main() called from Python)
            pass
    signal.signal(signal.SIGTERM, _raise_terminated)
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show ± or ° shows '?' instead
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", handlers=[_BarAwareHandler()])
    try:  # importing torch takes seconds: Ctrl-C or SIGTERM then ends as it does later
        from search.engine.run import SearchFailing
        from search.storage.study import quiet_optuna_warnings
    except KeyboardInterrupt as exc:
        return _stopped(exc)

    quiet_optuna_warnings()

    try:
        return dispatch(args, argv)
    except BoneAgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SearchFailing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `status | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # a full disk or a corrupted study file, wherever the command was
        from search.storage.study import storage_fault

        lasting = storage_fault(exc, getattr(args, "storage", None))
        if lasting is None:
            raise
        print(f"error: {lasting}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        return _stopped(exc)


def _stopped(exc: KeyboardInterrupt) -> int:
    """Ctrl-C (130) or SIGTERM (143), said in one line."""
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    print(f"\n{what}: the study is saved; rerun the same command to continue", file=sys.stderr)
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    from search.cli import commands

    if args.command == "data":
        return commands.data(args)
    return getattr(commands, args.command)(args, argv)

