"""Benchmarks (timings and comparisons, never test assertions): ``jscc-bench codec``, ``pipeline``
and ``compare``.  ``cli`` is the command; ``codec`` times the codec; ``compare`` runs the codecs
side by side over one lossy channel."""
