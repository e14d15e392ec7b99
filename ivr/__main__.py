"""``python -m ivr`` is ``callmfa``."""

import sys

from .cli import main

sys.exit(main())
