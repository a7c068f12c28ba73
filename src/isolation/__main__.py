"""``python -m isolation``: the same as the ``isolation`` command."""

import sys

from isolation._cli import main

sys.exit(main())
