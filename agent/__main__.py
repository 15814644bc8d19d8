"""``python -m vaccel_agent``: the same as ``vaccel-agent``."""

import sys

from .cli import main

sys.exit(main())
