"""optuna-dashboard on the study storage, bound to 127.0.0.1 unless --host says otherwise."""

from __future__ import annotations

import errno
import ipaddress
import logging
import signal
import socket
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

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


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The Host headers the dashboard answers: the address it was started on, under each name that
    means it. A page whose own domain resolves to this machine (DNS rebinding) sends its domain as Host
    and is refused; an IP address typed in a browser cannot be rebound. Bound to every interface
    (0.0.0.0, ::), this machine's names and any IP address are allowed."""
    names = {host}
    loopback = {"127.0.0.1", "localhost", "::1"}
    if host in loopback:
        names |= loopback
    if host in ("0.0.0.0", "::"):
        names |= loopback | {socket.gethostname(), socket.getfqdn()}
    shown = {f"[{n}]" if ":" in n else n for n in names}
    return frozenset(h.lower() for n in shown for h in (n, f"{n}:{port}"))


def _is_ip_literal(host_header: str) -> bool:
    """Whether a Host header names an IP address (with or without a port): no DNS answer can rebind it."""
    if host_header.startswith("["):
        name = host_header[1:].partition("]")[0]
    else:
        name = host_header.rpartition(":")[0] if ":" in host_header else host_header
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def guarded(app, host: str, port: int):
    """optuna-dashboard's WSGI app answering only requests meant for it: a Host header that is not the
    address it was started on (allowed_hosts) or an Origin header of another site gets 403 (no other
    web page can read a study, its per-image predictions, or call the API's DELETE routes), and no
    response carries Access-Control-Allow-Origin (optuna-dashboard sends '*' with artifacts)."""
    hosts = allowed_hosts(host, port)
    any_ip = host in ("0.0.0.0", "::")

    def refuse(start_response, why: str):
        start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"403 Forbidden: {why}\n".encode()]

    def app_for_this_machine(environ, start_response):
        asked = environ.get("HTTP_HOST", "").strip().lower()
        if asked not in hosts and not (any_ip and _is_ip_literal(asked)):
            return refuse(start_response, "this dashboard answers only requests addressed to it")
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and origin.lower().removeprefix("http://") != asked:
            return refuse(start_response, "requests from other web pages are refused")

        def without_cors(status, headers, exc_info=None):
            kept = [(k, v) for k, v in headers if not k.lower().startswith("access-control-")]
            return start_response(status, kept, exc_info)

        return app(environ, without_cors)

    return app_for_this_machine


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base class's name)
        log.debug("dashboard: " + format, *args)


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadedServer6(_ThreadedServer):
    address_family = socket.AF_INET6


def serve(url: str, host: str, port: int, study_name: str | None = None) -> None:
    """optuna-dashboard on the storage, answering only requests addressed to it (guarded); with
    study_name, the files retrain attached to that study (search.storage.study.artifact_dir) are
    listed and served too."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import wsgi

    check_port_free(host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the dashboard listens on %s: anyone who can reach this address can read the study", host)
    storage = open_storage(url, create=False)
    files = artifact_dir(study_name, url) if study_name else None
    store = FileSystemArtifactStore(str(files)) if files is not None and files.is_dir() else None
    server_class = _ThreadedServer6 if ":" in host else _ThreadedServer
    httpd = make_server(host, port, wsgi(storage, artifact_store=store), server_class, _QuietHandler)
    httpd.set_app(guarded(httpd.get_app(), host, httpd.server_port))  # the port bound, where 0 was asked
    shown = f"[{host}]" if ":" in host else host
    print(f"optuna-dashboard for {redact(url)} at http://{shown}:{httpd.server_port}/ (Ctrl-C stops it)", flush=True)
    # SIGTERM stops the server as Ctrl-C does and is then handed back to the CLI's own handler, which
    # exits 143 as for every command
    terminated: list[int] = []
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        httpd.server_close()
    if terminated and callable(previous):
        previous(signal.SIGTERM, None)
    print("dashboard stopped")
