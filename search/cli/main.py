"""Command line: parse arguments, call library functions, turn user mistakes into one line and exit 2."""

from __future__ import annotations

import argparse
import faulthandler
import io
import logging
import os
import signal
import sys

from boneage_core import BoneAgeError, DiskFailed
from boneage_core.errors import cannot_write
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


def candidates_int(text: str) -> int:
    value = whole_number(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"a choice needs 2 or more candidates, got {value}")
    return value


def seeds_at_least_two(text: str) -> int:
    value = whole_number(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"a seed mean and its spread need 2 or more seeds, got {value}")
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
        metavar="K",
        help="seeds per recipe (default 3); the verdict needs 2 or more, since it resamples seeds. The report "
        "states the smallest difference K seeds resolve (and 5 or 10 would); a rerun with more seeds reads the "
        "seeds already trained from their checkpoints and trains only the new ones",
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
    rt.add_argument(
        "--reselect",
        type=candidates_int,
        default=0,
        metavar="K",
        help="choose the final recipe through the seed noise: train the K best distinct configurations on the "
        "train split with --reselect-seeds fresh seeds each, score them on val only, and take the lowest "
        "seed-mean val MAE to the final test instead of the single-seed best trial",
    )
    rt.add_argument(
        "--reselect-seeds",
        type=seeds_at_least_two,
        metavar="S",
        help="seeds per candidate of --reselect, 2 or more (default 3; the trials' own seed is left out)",
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
        "--search-seeds", type=positive_int, help="sampler seeds per search arm, 0 .. N-1 (default 3; quick 2)"
    )
    bench.add_argument(
        "--search-jobs",
        type=positive_int,
        help="sampler seeds run at once, each process on its share of the cores (default 1)",
    )
    bench.add_argument(
        "--work",
        help="keep the scratch files (the search arms' studies) in this directory instead of a temporary one: "
        "a rerun with the same --work reads back the search arms that finished",
    )
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
    """The command line. While it parses and imports (seconds: torch), Ctrl-C and SIGTERM are held and
    then end the command at once, as "nothing was started": an exception raised inside an extension
    module's import can abort Python. After that SIGTERM is Terminated (Ctrl-C KeyboardInterrupt)
    until main() returns, and both handlers are put back as they were on the way out, so a program
    that calls main() can still be stopped with SIGTERM afterwards."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    held: list[int] = []
    for signum in previous:
        if previous[signum] is not signal.SIG_IGN:  # SIGINT ignored (a background job): left ignored
            signal.signal(signum, lambda n, frame: held.append(n))
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = get_args_parser().parse_args(argv)
        _set_up_output()
        from search.engine.run import SearchFailing  # noqa: F401  (torch, Optuna: loaded while signals are held)

        if previous[signal.SIGINT] is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_terminated)
        if held:
            return _stopped(Terminated() if signal.SIGTERM in held else KeyboardInterrupt(), None)
        return _run(args, argv)
    except KeyboardInterrupt as exc:  # between the handlers and the command: nothing was started
        return _stopped(exc, None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _set_up_output() -> None:
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID` prints every thread's stack: what a stuck run waits on
        try:
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        except (ValueError, io.UnsupportedOperation):  # stderr is no file (main() called from Python)
            pass
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show ± or ° shows '?' instead
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", handlers=[_BarAwareHandler()])


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    """The command, its user mistakes as one line (exit 2), its interruption as one line (130, 143)."""
    from search.engine.run import SearchFailing
    from search.storage.study import caused_by_storage, quiet_optuna_warnings, storage_fault

    quiet_optuna_warnings()
    try:
        return dispatch(args, argv)
    except BoneAgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (SearchFailing, DiskFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `status | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt as exc:
        return _stopped(exc, args)
    except Exception as exc:  # a full disk or a corrupted study file, wherever the command was
        lasting = storage_fault(exc, getattr(args, "storage", None)) if caused_by_storage(exc) else None
        if lasting is None and isinstance(exc, OSError):  # a disk error no layer below expected
            lasting = str(cannot_write("a file", exc))
        if lasting is None:
            raise
        print(f"error: {lasting}", file=sys.stderr)
        return EXIT_FAILED


def _stopped(exc: KeyboardInterrupt, args: argparse.Namespace | None) -> int:
    """Ctrl-C (130) or SIGTERM (143), said in one line with what it leaves behind."""
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    command = getattr(args, "command", None)
    if command is None:
        left = "nothing was started"
    elif command == "data":
        left = {
            "make-phantom": "nothing was written; rerun the same command",
            "check": "nothing was changed",
        }.get(args.data_command, "each split cached so far is kept; rerun the same command to finish")
    elif command == "bench":
        left = (
            "bench.json and bench.md hold the sections that finished, if any did; with --work, a rerun "
            "reads back the search trials that finished"
        )
    elif command == "dashboard":
        left = "dashboard stopped"
    elif command in ("report", "status"):
        left = "the study is unchanged"
    else:
        left = "the study is saved; rerun the same command to continue"
    print(f"\n{what}: {left}", file=sys.stderr)
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    from search.cli import commands

    if args.command == "data":
        return commands.data(args)
    return getattr(commands, args.command)(args, argv)
