"""``python -m bench``."""

import sys

from ivr.log import configure

from .run import main

configure("warning")
sys.exit(main())
