"""``python -m yieldio`` is the ``yieldio`` command."""

import sys

from .apps.cli import main

sys.exit(main())
