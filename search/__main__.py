"""python -m search: the command line (search.cli.main)."""

import os
import signal
import sys


def _before_main(signum, frame):
    """Ctrl-C or SIGTERM while Python is still loading the command: nothing was started; exit as the
    command does later (130 or 143), without a traceback."""
    what = b"terminated (SIGTERM)" if signum == signal.SIGTERM else b"interrupted"
    os.write(2, b"\n" + what + b": nothing was started\n")
    os._exit(128 + signum)


def _after_main(code: int) -> None:
    """From here on the command has finished and said so: Ctrl-C or SIGTERM while Python shuts down
    (a second or so with torch loaded) says that in one line and exits with the command's own status,
    instead of the loading message or a silent 130."""

    def finished(signum, frame):
        what = b"terminated (SIGTERM)" if signum == signal.SIGTERM else b"interrupted"
        os.write(2, b"\n" + what + b" while exiting: the command had finished, nothing is lost\n")
        os._exit(code)

    signal.signal(signal.SIGTERM, finished)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, finished)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _before_main)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _before_main)

    from search.cli.main import main

    status = main()
    _after_main(status)
    sys.exit(status)
