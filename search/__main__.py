"""python -m search: the command line (search.cli.main)."""

import sys

from search.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
