"""Side-by-side comparison of JSCC with H.264 (plain, FEC, NACK) and JPEG over the same lossy channel
(issue 5). Run ``jscc-bench compare --help`` (or ``python -m jscc_stream.bench.compare``); results
and how to read them: docs/results.md."""
