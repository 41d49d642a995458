"""``python -m jscc_stream.bench.compare``: the same as ``jscc-bench compare``."""

import sys

from .cli import main

sys.exit(main())
