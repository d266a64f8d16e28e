"""The study and its storage: URL checks, password redaction, storage faults, heartbeat and stale-trial
retry, the sampler and the pruner, and opening a study (create or resume, or one that must exist)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models  # the trial table, for the trials Optuna's stale check misses
from optuna.trial import TrialState
from sqlalchemy.engine import URL, make_url

from boneage_core.errors import BoneAgeError, cannot_write
from search.config.specs import PrunerSettings, SamplerSettings, StudySpec

log = logging.getLogger(__name__)

_SECRET_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)  # query keys whose values are secrets
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+]*")  # what an unreadable URL may still show
PERSISTENT_BACKENDS = ("sqlite", "postgresql", "mysql")
METRIC_NAMES = ["val MAE (months)"]  # the objective, as optuna-dashboard and Optuna's plots name it


def _parse(url: str) -> URL | None:
    """SQLAlchemy's reading of the URL, or None when it cannot be read as written. A host holding '@'
    means an unescaped '@' inside the password: SQLAlchemy splits it there, so it counts as unreadable."""
    try:
        parsed = make_url(url)
    except Exception:  # ArgumentError, or ValueError for a bad port
        return None
    return None if parsed.host and "@" in parsed.host else parsed


def _secrets(url: str) -> list[str]:
    """Every secret in the URL as it may appear in text: the password (as written and decoded) and the
    values of password-like query keys; for an unreadable URL, everything after the scheme."""
    parsed = _parse(url)
    if parsed is None:
        rest = url[len(m.group(0)) :] if (m := _SCHEME.match(url)) else url
        rest = rest.lstrip(":/")
        userinfo = rest.rsplit("@", 1)[0] if "@" in rest else ""
        return sorted({x for x in (rest, userinfo, userinfo.partition(":")[2]) if x}, key=len, reverse=True)
    found = [parsed.password] if parsed.password else []
    if "@" in url.split("://", 1)[-1] and parsed.password:  # the password as typed, maybe percent-encoded
        userinfo = url.split("://", 1)[1].rsplit("@", 1)[0]
        found.append(userinfo.partition(":")[2])
    for key, value in parsed.query.items():
        if _SECRET_KEY.search(key):
            found += [value] if isinstance(value, str) else list(value)
    return sorted({s for s in found if s}, key=len, reverse=True)


def redact(url: str) -> str:
    """The URL with its password hidden, wherever it was given (userinfo or query string); an
    unreadable URL shows its scheme only. Safe to print, log and store."""
    parsed = _parse(url)
    if parsed is None:
        m = _SCHEME.match(url)
        return f"{m.group(0)}://***" if m else "***"
    if not _secrets(url):
        return url
    query = {k: ("***" if _SECRET_KEY.search(k) else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def scrub(text: str, url: str) -> str:
    """Text (an error message, a log line) with the URL and each of its secrets hidden."""
    text = text.replace(url, redact(url))
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


URL_OPTIONS = ("--storage", "--postgres")  # options whose value is a storage URL, however malformed
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]*")
# user:password@ after a scheme, even a malformed one ('postgresql:/u:pw@h', 'postgresql//u:pw@h')
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*:?/{0,2}[^\s:/@'\"=]+:)[^\s@'\"]+@")


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with every URL in it redacted, whichever option carries it: the values of
    --storage and --postgres (as one word with '=' or as the next word, however malformed), the value
    of any other `--option=URL`, and any other word that looks like a URL."""
    out: list[str] = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if out and out[-1] in URL_OPTIONS:
            arg = redact(arg)
        elif eq and (name in URL_OPTIONS or _URL.match(value)):
            arg = f"{name}={redact(value)}"
        elif _URL.match(arg):
            arg = redact(arg)
        out.append(_USERINFO.sub(r"\1***@", arg))
    return out


def redact_text(text: str) -> str:
    """Text (argparse's message quoting what was typed) with every URL in it redacted."""
    return _USERINFO.sub(r"\1***@", _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text))


def default_storage_url(study_name: str, studies_dir: Path = Path("studies")) -> str:
    return f"sqlite:///{studies_dir / (study_name + '.db')}"


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite URL; None for other backends."""
    parsed = _parse(url)
    return Path(parsed.database or "") if parsed is not None and parsed.get_backend_name() == "sqlite" else None


def check_url(url: str, create: bool = True) -> str:
    """A URL Optuna can keep a study in. With create, a sqlite file's directory is made and must be
    writable; without it (commands that only read, or that need the study to exist) nothing is made."""
    parsed = _parse(url)
    if parsed is None or parsed.get_backend_name() not in PERSISTENT_BACKENDS:
        raise BoneAgeError(
            f"storage URL {redact(url)!r} is not valid: use sqlite:///path.db or postgresql://user@host/db"
        )
    path = sqlite_path(url)
    if path is not None and str(path) in ("", ".", ":memory:"):
        raise BoneAgeError(
            f"storage {redact(url)!r} keeps the study in memory, where it is lost when the command ends: "
            "use a file, sqlite:///path.db"
        )
    if path is not None and path.parts and path.parts[0].startswith("~"):
        full = Path(os.path.expanduser(path))
        raise BoneAgeError(
            f"storage {redact(url)!r}: '~' is no home folder in a URL (SQLite, Optuna and optuna-dashboard "
            f"would each make a folder named '~'); give the full path, sqlite:///{full}"
        )
    if path is not None and create:
        parent = path.parent if path.parent != Path("") else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cannot_write(f"the study directory {parent}", exc, verb="create") from None
        probe = path if path.exists() else parent
        if not os.access(probe, os.W_OK):
            raise BoneAgeError(f"study storage {path} is not writable: check permissions or pass --storage")
    return url


# Errors of a database that went away (a restarted server, a dropped connection): worth waiting for
STORAGE_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    optuna.exceptions.StorageInternalError,
)


def caused_by_storage(exc: BaseException) -> bool:
    """Whether a database error is anywhere in the chain. (When the database drops during a tell,
    Optuna's own clean-up then fails with an UnboundLocalError that only chains the real cause.)"""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, STORAGE_ERRORS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


# What a database says when retrying cannot help, and what to tell the user instead
LASTING_STORAGE_FAULTS = (
    ("disk is full", "no space left on the device holding the study storage {where}: free some space, then rerun"),
    ("no space left", "no space left on the device holding the study storage {where}: free some space, then rerun"),
    ("malformed", "the study storage {where} is corrupted (database disk image is malformed): restore a copy"),
    ("not a database", "the study storage {where} is not a database file (corrupted or overwritten): restore a copy"),
    ("readonly database", "the study storage {where} became read-only: check its permissions, then rerun"),
    ("disk i/o error", "the disk holding the study storage {where} failed to read or write (disk I/O error)"),
)


def storage_fault(exc: BaseException, url: str | None) -> str | None:
    """The one-line explanation of a storage error that a retry cannot fix, or None (an outage, or no
    storage error at all). url None: the default storage, named by the command."""
    seen, texts = 0, []
    while exc is not None and seen < 20:
        texts.append(str(exc).lower())
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    for needle, message in LASTING_STORAGE_FAULTS:
        if any(needle in t for t in texts):
            return message.format(where=redact(url) if url else "(studies/<study>.db)")
    return None


def open_storage(
    url: str, heartbeat: tuple[int, int] | None = None, create: bool = True, read_only: bool = False
) -> RDBStorage:
    """RDBStorage; with heartbeat=(interval_s, grace_s), a RUNNING trial silent for grace_s is failed and
    re-enqueued (once or twice) by the next worker that looks. Without create, a sqlite file must exist;
    read_only opens a sqlite file so that nothing can be written (a read-only copy of a study works)."""
    check_url(url, create and not read_only)
    path = sqlite_path(url)
    if not create and path is not None and not path.is_file():
        raise BoneAgeError(f"no study storage at {path}: run `python -m search run` first, or pass --storage")
    if path is not None and path.is_file():
        check_sqlite_file(path, url, must_hold_study=not create or read_only)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    driver_url = url
    if path is not None:
        engine_kwargs = {"connect_args": {"timeout": 60}}
        if read_only:
            driver_url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
            engine_kwargs["connect_args"]["uri"] = True
    try:
        with warnings.catch_warnings():
            # heartbeat and its retry callback are marked experimental; they are Optuna 5's documented way
            # to fail and retry the trials of dead workers
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs: dict[str, Any] = {}
            if heartbeat:
                kwargs = dict(
                    heartbeat_interval=heartbeat[0],
                    grace_period=heartbeat[1],
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                )
            return _rdb_storage_retrying(driver_url, engine_kwargs, kwargs)
    except Exception as exc:  # sqlalchemy raises driver-specific types
        lasting = storage_fault(exc, url)
        if lasting:
            raise BoneAgeError(lasting) from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BoneAgeError(f"cannot open study storage {redact(url)}: {scrub(reason, url)[:200]}") from None


SQLITE_LOCK_WAIT_S = 10.0  # how long a command waits for another process's lock on a SQLite study
# The tables of an Optuna study storage (Optuna 5): a file with some of them is a damaged study storage
OPTUNA_TABLES = frozenset(
    {
        "alembic_version", "studies", "study_directions", "study_system_attributes", "study_user_attributes",
        "trial_heartbeats", "trial_intermediate_values", "trial_params", "trial_system_attributes",
        "trial_user_attributes", "trial_values", "trials", "version_info",
    }
)  # fmt: skip


def check_sqlite_file(path: Path, url: str, must_hold_study: bool) -> None:
    """A SQLite file is a study storage, or nothing yet (empty: run makes it one), before Optuna opens
    it: a file of something else, or a storage missing tables, would otherwise surface as a misleading
    'read-only' (a command that only reads) or get Optuna's tables written into it (run)."""
    import sqlite3

    where = redact(url)
    if path.stat().st_size == 0:
        if must_hold_study:
            raise BoneAgeError(f"the study storage {where} is an empty file: it holds no study yet")
        return
    try:
        uri = f"file:{path.resolve()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=SQLITE_LOCK_WAIT_S)) as db:
            tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
    except sqlite3.DatabaseError as exc:  # OperationalError ('locked') among them
        if "locked" in str(exc):
            raise BoneAgeError(
                f"the study storage {where} has been locked by another process for {SQLITE_LOCK_WAIT_S:g} s (a "
                "transaction held open; a search's own writes take milliseconds): try again once it ends"
            ) from None
        raise BoneAgeError(storage_fault(exc, url) or f"the study storage {where} cannot be read ({exc})") from None
    if not tables & OPTUNA_TABLES:
        if tables:  # another program's database: never written into
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise BoneAgeError(f"{where} is a SQLite database of something else (tables {shown}); choose another file")
        if must_hold_study:
            raise BoneAgeError(f"the study storage {where} holds no study yet (a database without tables)")
    elif missing := OPTUNA_TABLES - tables:
        raise BoneAgeError(
            f"the study storage {where} is damaged: it lacks the table(s) {', '.join(sorted(missing))}; restore a copy"
        )


class ResilientRDBStorage(RDBStorage):
    """RDBStorage whose heartbeat survives a database restart: a beat that cannot be written is
    skipped (the next one, seconds later, records it) instead of killing the heartbeat thread, and
    said once per outage, not at every beat."""

    _heartbeat_lost = False

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials (a heartbeat older than the grace period), and the trials it never
        counts: RUNNING ones with no heartbeat at all, started over a grace period ago. Their process
        died between creating the trial and its first beat (milliseconds, but a kill lands there), and
        without this a resumed search waits on them for ever."""
        stale = super()._get_stale_trial_ids(study_id)
        grace = timedelta(seconds=self.grace_period or 2 * (self.heartbeat_interval or 0))
        session = self.scoped_session()
        try:
            silent = [
                (t.trial_id, t.datetime_start)  # Optuna stores UTC and gives local time, as datetime.now()
                for t in session.query(models.TrialModel)
                .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING)
                .filter(~models.TrialModel.heartbeats.any())
            ]
        finally:
            session.close()
        now = datetime.now()
        return stale + [i for i, started in silent if started is not None and now - started > grace and i not in stale]

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            if not self._heartbeat_lost:
                log.warning(
                    "the heartbeat of trial id %d could not be written (%s); trying again every %s s",
                    trial_id,
                    type(exc).__name__,
                    self.heartbeat_interval,
                )
            self._heartbeat_lost = True
            return
        if self._heartbeat_lost:
            log.warning("the heartbeat of trial id %d is written again", trial_id)
        self._heartbeat_lost = False


def _rdb_storage_retrying(url: str, engine_kwargs: dict, kwargs: dict, attempts: int = 4) -> RDBStorage:
    """Two workers starting on a fresh database both create Optuna's tables; the loser of that race
    gets an integrity error, and a moment later finds the tables made."""
    for attempt in range(attempts):
        try:
            return ResilientRDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
            racing = isinstance(exc, sqlalchemy.exc.IntegrityError) or "locked" in str(exc)
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def load_existing_study(
    name: str, url: str, read_only: bool = False, run_hint: str = "python -m search run"
) -> optuna.Study:
    """A study that must already exist (status, report, baseline, retrain): a missing storage or study
    is one line naming the command that makes it, and no file or directory is created for it.
    read_only for commands that only read."""
    check_url(url, create=False)  # a URL no command can use is said as such, not as a storage to create
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise BoneAgeError(f"no study storage at {path}: create the study with `{run_hint}`, or pass --storage")
    storage = open_storage(url, create=False, read_only=read_only)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise BoneAgeError(
            storage_fault(exc, url)
            or f"cannot read study storage {redact(url)}: {scrub(str(exc).splitlines()[0], url)}"
        ) from None
    except KeyError:
        names = sorted(s.study_name for s in storage.get_all_studies())
        held = f"it holds {', '.join(names)}" if names else "it holds no study"
        raise BoneAgeError(
            f"no study '{name}' in {redact(url)} ({held}): create it with `{run_hint}`, or pass --study/--storage"
        ) from None


def make_sampler(settings: SamplerSettings, offset: int) -> optuna.samplers.BaseSampler:
    """The sampler seeded by the study seed plus how far the study already is (and the worker), so a
    resumed or parallel run continues the sequence instead of re-proposing the same start-up points."""
    seed = settings.seed + offset
    if settings.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.n_startup_trials)


def make_pruner(p: PrunerSettings, max_epochs: int) -> optuna.pruners.BasePruner:
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource, max_resource=max_epochs, reduction_factor=p.reduction_factor
        )
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(spec: StudySpec, url: str, offset: int = 0, heartbeat: bool = True) -> optuna.Study:
    """The study of spec in url, created on first use, resumed after."""
    storage = open_storage(url, heartbeat=(spec.heartbeat_interval_s, spec.grace_period_s) if heartbeat else None)
    # Optuna logs every failed trial with its traceback; the run loop prints one line instead, and the
    # reason is stored in the trial's fail_reason attr
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction="minimize",
        sampler=make_sampler(spec.sampler, offset),
        pruner=make_pruner(spec.pruner, spec.train.epochs),
        load_if_exists=True,
    )
    name_the_metric(study)
    return study


def name_the_metric(study: optuna.Study) -> None:
    """The objective by its name and unit, as optuna-dashboard and every plot of the study show it."""
    if study.metric_names != METRIC_NAMES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(METRIC_NAMES)


def artifact_dir(study_name: str, url: str) -> Path:
    """Where a study's files for optuna-dashboard live (Optuna's file-system artifact store): beside a
    SQLite study file, else in studies/ of the current directory."""
    path = sqlite_path(url)
    return (path.parent if path is not None else Path("studies")) / f"{study_name}-artifacts"


def attach_files(study: optuna.Study, url: str, files: list[Path]) -> Path:
    """The files as artifacts of the study, so optuna-dashboard lists them; the store's directory."""
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    where = artifact_dir(study.study_name, url)
    where.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(where))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for f in files:
            upload_artifact(artifact_store=store, file_path=str(f), study_or_trial=study)
    return where


def quiet_optuna_warnings() -> None:
    """Optuna's warnings that say nothing a user can act on: a failed trial (the run loop prints its
    reason in one line) and the experimental marks on heartbeats and stale-trial retry, Optuna 5's
    documented way to survive dead workers."""
    warnings.filterwarnings("ignore", message=".*Trial.*failed.*")
    warnings.filterwarnings("ignore", message=".*experimental.*")
