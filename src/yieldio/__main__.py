"""``python -m yieldio`` is the ``yieldio`` command."""

import sys

from .cli import main

sys.exit(main())
