"""optuna-dashboard on the study storage, bound to 127.0.0.1 unless --host says otherwise."""

from __future__ import annotations

import errno
import logging
import signal
import socket

from boneage_core import BoneAgeError
from search.storage.study import artifact_dir, open_storage, redact

log = logging.getLogger(__name__)


def check_port_free(host: str, port: int) -> None:
    """Bind once to say what is wrong before the server starts: the port is taken, or the host is no
    address of this machine (two different fixes)."""
    if not host.strip():
        raise BoneAgeError("--host is empty: give an address (127.0.0.1 for this machine, 0.0.0.0 for every one)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except socket.gaierror:
            raise BoneAgeError(f"--host {host!r} is not an address or a name this machine can resolve") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BoneAgeError(f"port {port} on {host} is in use; choose another --port") from None
            raise BoneAgeError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host") from None


def serve(url: str, host: str, port: int, study_name: str | None = None) -> None:
    """optuna-dashboard on the storage; with study_name, the files retrain attached to that study
    (search.storage.study.artifact_dir) are listed and served too."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    check_port_free(host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the dashboard listens on %s: anyone who can reach this address can read the study", host)
    storage = open_storage(url, create=False)
    files = artifact_dir(study_name, url) if study_name else None
    store = FileSystemArtifactStore(str(files)) if files is not None and files.is_dir() else None
    print(f"optuna-dashboard for {redact(url)} at http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    # bottle, under optuna-dashboard, ends quietly on any KeyboardInterrupt: SIGTERM is remembered here
    # and handed back to the CLI's own handler afterwards, which exits 143 as for every command
    terminated: list[int] = []
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        run_server(storage, host=host, port=port, artifact_store=store)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    if terminated and callable(previous):
        previous(signal.SIGTERM, None)
    print("dashboard stopped")
