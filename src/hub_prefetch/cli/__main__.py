"""``python -m hub_prefetch.cli``: the ``hub-prefetch`` command."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
