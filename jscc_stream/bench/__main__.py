"""``python -m jscc_stream.bench``: the same as ``jscc-bench``."""

import sys

from .cli import main

sys.exit(main())
