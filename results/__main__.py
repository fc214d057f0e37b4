"""Entry point of ``python -m results``."""

import sys

from .cli import main

sys.exit(main())
