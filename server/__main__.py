"""``python -m server``: the same as the ``switchboard`` command."""

import sys

from .cli import main

sys.exit(main())
