"""jscc-stream: loss-resilient real-time video streaming with an erasure-aware JSCC codec.

Subpackages: ``models`` (codec, training, evaluation), ``netem`` (loss processes, shim, tc),
``proto`` (wire format), ``sender`` and ``receiver`` (daemons).
"""

__version__ = "0.1.0"
