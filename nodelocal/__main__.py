"""`python -m nodelocal` runs the command line."""

from __future__ import annotations

import sys

from nodelocal.cli import main

sys.exit(main())
