"""`python -m nodelocal` runs the command line."""

from __future__ import annotations

import sys

from nodelocal.cli.commands import main

sys.exit(main())
