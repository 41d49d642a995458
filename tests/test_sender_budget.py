"""FrameBudget is read on the encode thread while the event loop records resends: found by
`jscc-bench soak` (the sender's encode loop died with "deque mutated during iteration")."""

from __future__ import annotations

import sys
import threading
import time

from jscc_stream.sender.transport import FrameBudget


def test_codec_bytes_while_another_thread_records_resends():
    budget, errors = FrameBudget(), []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows within ms
    stop = time.monotonic() + 0.5

    def resends() -> None:
        while time.monotonic() < stop:
            budget.on_resend(time.monotonic(), 900)

    writer = threading.Thread(target=resends)
    writer.start()
    try:
        while time.monotonic() < stop:
            try:
                assert budget.codec_bytes(1e6, 15.0, time.monotonic()) >= 64
            except RuntimeError as exc:
                errors.append(exc)
                break
    finally:
        writer.join()
        sys.setswitchinterval(old)
    assert not errors
