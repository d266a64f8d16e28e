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


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _before_main)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _before_main)

    from search.cli.main import main

    sys.exit(main())
