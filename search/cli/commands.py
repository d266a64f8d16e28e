"""One function per CLI command: build the spec and storage from the arguments, call the library, print."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from boneage_core import BoneAgeError
from boneage_core.errors import cannot_write
from search.config.specs import shown_path
from search.reporting.document import plural
from search.storage.study import redact
from search.storage.truth import StudyRef, open_existing, study_ref


def _ref(args: argparse.Namespace) -> StudyRef:
    return study_ref(args.study, args.storage, args.overrides)


def _rewrite_note(study, ref: StudyRef) -> None:
    """The dashboard note from the study's results. The command's own result is stored by then, so a
    note that cannot be written (another result of the study unreadable) is said, not a failure."""
    from search.reporting.report import save_study_note

    try:
        save_study_note(study, ref)
    except BoneAgeError as exc:
        print(f"warning: the dashboard note was not rewritten: {exc}", file=sys.stderr)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """A new study is created from its file and --set; an existing one resumes on its own settings."""
    from search.engine.run import run_study
    from search.storage.truth import existing_study, file_edits, spec_for_run

    ref = _ref(args)
    spec, resumed = spec_for_run(ref, args.overrides, args.data)
    if not args.quiet:
        origin = "its stored settings" if resumed else shown_path(spec.path)
        print(
            f"study '{spec.name}' ({origin}) in {redact(ref.url)}: searching "
            f"{', '.join(spec.space) or 'nothing'} until {plural(args.trials, 'trial')} have finished",
            flush=True,
        )
    if resumed and (edited := file_edits(ref, spec, args.overrides, args.data)):
        print(f"note: {edited}; start a new study with --set study.name=<new name> to use the file's", flush=True)
    start = time.monotonic()
    out = run_study(spec, ref.url, args.trials, args.workers, args.timeout, args.quiet, argv=argv)
    if not args.quiet:
        best = f"{out.best_value:.2f} months" if out.best_value is not None else "none yet"
        print(
            f"{out.finished} finished trials ({out.pruned} pruned, {out.failed} failed), best val MAE {best}, "
            f"{time.monotonic() - start:.0f} s this run"
        )
        if out.timed_out:
            print(f"stopped by --timeout; rerun the same command to continue to {plural(args.trials, 'trial')}")
        from search.storage.results import BASELINE_ATTR

        study = existing_study(ref)
        if study is not None and BASELINE_ATTR in study.user_attrs:
            print(f"next: {ref.hint('retrain')}")
        else:
            print(f"next: {ref.hint('baseline')}, then {ref.hint('retrain')}")
    return 0


def baseline(args: argparse.Namespace, argv: list[str]) -> int:
    from search.engine.baseline import run_baseline
    from search.reporting.words import format_seeds

    ref = _ref(args)
    study, spec = open_existing(ref, args.overrides, args.data)
    b = spec.baseline
    if not args.quiet:
        print(
            f"baseline on study '{spec.name}': {b.backbone}, {b.optimizer} lr {b.lr:g}, {b.loss} loss, "
            f"{plural(b.epochs, 'epoch')}, batch {b.batch_size}",
            flush=True,
        )
    record = run_baseline(spec, study, args.quiet, seeds=args.seeds, argv=argv)
    _rewrite_note(study, ref)
    sd = f", SD {record.val_mae_sd:.2f}" if record.val_mae_sd is not None else ""
    print(
        f"baseline val MAE {record.val_mae_months:.2f} months, mean of {plural(args.seeds, 'seed')} "
        f"({format_seeds(record.val_mae_per_seed)}{sd}; {record.wall_time_s:.0f} s); "
        f"mean predictor {record.mean_predictor_val_mae_months:.2f} months; recorded in {redact(ref.url)}"
    )
    if not args.quiet:
        print(f"next: {ref.hint('retrain')}")
    return 0


def _is_recipe_override(item: str) -> bool:
    return item.partition("=")[0].strip().startswith(("train.", "baseline."))


def retrain(args: argparse.Namespace, argv: list[str]) -> int:
    """--set train.* and --set baseline.* are deliberate changes for this retrain (to the tuned recipes
    and to the baseline), recorded and shown; every other setting must match the study's."""
    from search.config.specs import apply_overrides
    from search.engine.retrain import retrain as run_retrain
    from search.reporting.words import reselection_line, retrain_lines

    if args.reselect_seeds is not None and not args.reselect:
        raise BoneAgeError("--reselect-seeds sets the seeds of --reselect K: give --reselect too, or drop it")
    ref = _ref(args)
    deliberate = [o for o in args.overrides if _is_recipe_override(o)]
    study, spec = open_existing(ref, [o for o in args.overrides if not _is_recipe_override(o)], args.data)
    changes = apply_overrides({}, deliberate)
    out = run_retrain(
        spec,
        study,
        ref,
        seeds=args.seeds,
        tta=args.tta,
        train_overrides=changes.get("train", {}),
        baseline_overrides=changes.get("baseline", {}),
        quiet=args.quiet,
        argv=argv,
        top_k=args.top_k,
        bias_correction=args.bias_correction,
        reselect_k=args.reselect,
        reselect_seeds=args.reselect_seeds or 3,
        on_choice=lambda chosen: print(reselection_line(SimpleNamespace(reselection=chosen)), flush=True),
    )
    _rewrite_note(study, ref)
    print("\n".join(retrain_lines(out)))
    print(f"recorded in the study; prediction files in results/{spec.name}/; next: {ref.hint('report')}")
    return 0


def report(args: argparse.Namespace, argv: list[str]) -> int:
    from search.reporting.report import write_report

    ref = _ref(args)
    study, _ = open_existing(ref, args.overrides, args.data, read_only=True)
    try:
        out, aside = write_report(study, ref, argv=argv)
    except OSError as exc:
        raise cannot_write("the report", exc) from None
    if aside:
        print(f"moved the files of an earlier report that this study does not write again to {aside}/")
    print(f"report written to {out}/ (open {out}/index.html)")
    return 0


def status(args: argparse.Namespace, argv: list[str]) -> int:
    from search.reporting.report import status_text

    ref = _ref(args)
    study, _ = open_existing(ref, args.overrides, args.data, read_only=True)
    print(status_text(study, ref))
    return 0


def dashboard(args: argparse.Namespace, argv: list[str]) -> int:
    from search.cli.dashboard import serve

    ref = _ref(args)
    if args.overrides or args.data:  # settings are the study's: a differing one is refused as elsewhere
        open_existing(ref, args.overrides, args.data, read_only=True)
    serve(ref.url, args.host, args.port, ref.name)
    return 0


def data(args: argparse.Namespace) -> int:
    from boneage_core.files import private_tmp, remove_abandoned_tmp
    from boneage_core.phantom import NOISE_FLOOR_MAE_MONTHS, write_phantom

    if args.data_command == "make-phantom":
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BoneAgeError(f"{out} already exists and is not an empty directory; choose a new folder")
        tmp = private_tmp(out.absolute())  # written aside, renamed into place whole: never half a phantom
        try:
            out.absolute().parent.mkdir(parents=True, exist_ok=True)
            remove_abandoned_tmp(out.absolute())
            write_phantom(tmp, args.n, args.seed, quiet=False)
            os.replace(tmp, out)  # onto a missing or empty directory
        except OSError as exc:
            raise cannot_write(f"the phantom to {args.out}", exc) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(
            f"wrote {args.n} phantom radiographs to {out} (label noise floor: MAE {NOISE_FLOOR_MAE_MONTHS:.2f} months)"
        )
        return 0
    if args.data_command == "check":
        from boneage_core.inspection import check_directory

        text, problem = check_directory(args.dir, quiet=False)
        print(text, flush=True)
        if problem:
            raise BoneAgeError(problem)
        return 0
    from boneage_core.config import DataSettings, check_image_size
    from boneage_core.dataset import prepare

    check_image_size(args.size, "--size")
    decoded = prepare(DataSettings(source=args.dir, seed=args.seed), args.size, quiet=False)
    print(f"cached {len(decoded.table)} images at {args.size} px")
    return 0


def bench(args: argparse.Namespace, argv: list[str]) -> int:
    from search.bench.run import run_bench

    # a quick or partial run never overwrites the full figures in results/bench
    partial = args.only is not None
    out = args.out or ("results/bench-quick" if args.quick else "results/bench-partial" if partial else "results/bench")
    report = run_bench(
        out, args.quick, args.device, args.only, args.postgres, args.search_trials, args.search_seeds, argv=argv,
        work_dir=args.work, search_jobs=args.search_jobs,
    )  # fmt: skip
    print(f"wrote {out}/bench.md and bench.json ({report['total_s']:.0f} s)")
    return 0
