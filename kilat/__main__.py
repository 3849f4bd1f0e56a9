"""``python -m kilat`` is the ``kilat`` command."""

import sys

from kilat.cli import main

sys.exit(main())
