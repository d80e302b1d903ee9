"""``python -m fastminerf``: the ``fastminerf`` command."""

import sys

from .cli import main

sys.exit(main())
