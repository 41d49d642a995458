"""Side-by-side comparison of JSCC with H.264 (plain, FEC, NACK) and JPEG over the same lossy channel
(issue 5). Run ``python -m bench.compare --help``; results and how to read them: docs/results.md."""
