"""``python -m isolation``: the same as the ``isolation`` command."""

import sys

from isolation._cli import main

if __name__ == "__main__":  # not when multiprocessing's spawn re-imports the main module
    sys.exit(main())
