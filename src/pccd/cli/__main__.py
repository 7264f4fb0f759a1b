"""``python -m pccd.cli``: the ``pccd`` command."""

import sys

from pccd.cli import main

sys.exit(main())
