"""Study storage: URL checks, password redaction, heartbeat and stale-trial retry, create or resume."""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from boneage_core import BoneAgeError

_URL = re.compile(r"^(?P<scheme>[a-z][a-z0-9+]*)://(?P<rest>.*)$")


def redact(url: str) -> str:
    """The URL with any password replaced by ***; safe to print, log and store."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def default_storage_url(study_name: str, studies_dir: Path = Path("studies")) -> str:
    return f"sqlite:///{studies_dir / (study_name + '.db')}"


def check_url(url: str) -> str:
    m = _URL.match(url)
    if not m or m["scheme"].split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        raise BoneAgeError(
            f"storage URL {redact(url)!r} is not valid: use sqlite:///path.db or postgresql://user@host/db"
        )
    if m["scheme"] == "sqlite":
        path = Path(m["rest"].removeprefix("/"))
        if str(path) not in ("", ":memory:"):
            parent = path.parent if path.parent != Path("") else Path(".")
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BoneAgeError(f"cannot create the study directory {parent} ({exc.strerror})") from None
            probe = path if path.exists() else parent
            if not os.access(probe, os.W_OK):
                raise BoneAgeError(f"study storage {path} is not writable: check permissions or pass --storage")
    return url


def with_driver(url: str) -> str:
    """postgresql://... with the installed driver: SQLAlchemy 2.1 means psycopg 3 by a bare
    postgresql://, while this project installs psycopg2-binary."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def open_storage(url: str, heartbeat: tuple[int, int] | None = None) -> RDBStorage:
    """RDBStorage; with heartbeat=(interval_s, grace_s), a RUNNING trial silent for grace_s is failed and
    re-enqueued (once or twice) by the next worker that looks."""
    check_url(url)
    engine_kwargs = {"pool_pre_ping": True} if not url.startswith("sqlite") else {"connect_args": {"timeout": 60}}
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
            return _rdb_storage_retrying(with_driver(url), engine_kwargs, kwargs)
    except Exception as exc:  # sqlalchemy raises driver-specific types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BoneAgeError(f"cannot open study storage {redact(url)}: {redact(reason)[:200]}") from None


class ResilientRDBStorage(RDBStorage):
    """RDBStorage whose heartbeat survives a database restart: a beat that cannot be written is
    skipped (the next one, seconds later, records it) instead of killing the heartbeat thread."""

    def record_heartbeat(self, trial_id: int) -> None:
        import sqlalchemy.exc

        try:
            super().record_heartbeat(trial_id)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            pass


def _rdb_storage_retrying(url: str, engine_kwargs: dict, kwargs: dict, attempts: int = 4) -> RDBStorage:
    """Two workers starting on a fresh database both create Optuna's tables; the loser of that race
    gets an integrity error, and a moment later finds the tables made."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return ResilientRDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
            racing = isinstance(exc, sqlalchemy.exc.IntegrityError) or "locked" in str(exc)
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def check_space_matches(study: optuna.Study, signature: dict[str, Any], study_file: str) -> None:
    """Refuse to mix trials of two different search spaces in one study."""
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", signature)
        return
    if json.loads(json.dumps(stored)) != json.loads(json.dumps(signature)):
        raise BoneAgeError(
            f"study '{study.study_name}' was created with another search space than {study_file} now defines; "
            "restore the TOML, or start a new study with --set study.name=<new name>"
        )
