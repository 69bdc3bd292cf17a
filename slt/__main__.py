"""``python -m slt``: the same as the ``slt`` command."""

import sys

from slt.cli import main

sys.exit(main())
