"""Predicted frames' references, kept in sync between sender and receiver under loss.

The receiver keeps the pictures it decoded (:class:`ReferenceStore`) and, after decoding each
frame, sends a receipt: which payloads it used and a CRC of the picture
(:mod:`.receipts`).  A frame whose reference it does not hold is not decoded, and its receipt
says so.  The sender's side (:class:`ReferenceState`) chooses what to predict from:

``feedback`` mode (reference picture selection, as H.263's NEWPRED and H.264's long-term
references do it, with optimism): while the receipts report no loss, each frame is predicted
from the previous one as the sender decoded it, loss-free (*optimistic*).  A receipt with
losses makes the sender decode that frame from exactly the payloads that arrived and the
reference it was predicted from, which it holds itself, so it holds the receiver's picture bit
for bit (the CRC confirms it) and predicts the next frame from it (*resync*): a loss drifts for
one round trip, never longer.  While losses are frequent (more than ``optimism_loss`` of the
last 16 receipts) every frame is predicted from the newest *confirmed* picture.  At most one
decode a frame: only the newest receipt that needs one is decoded.  Without a confirmed picture
(start, a receiver that restarted or lost its reference) the next frame is intra; a return path
silent for ``silence_s`` falls back on oneway.

``oneway`` mode (no return path, or several receivers that lose different packets): predict
from the previous frame as the sender decoded it with nothing lost, and send an intra frame
every ``intra_period`` frames, which bounds how long a loss's error can drift.

``intra`` mode: every frame intra (the still-image codec's behaviour).

A forged or stale receipt cannot corrupt this state: it only ever confirms a frame the sender
sent, from payloads the sender holds, and a wrong bitmap gives a picture whose CRC does not
match the receiver's claim, which is then not used.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from .receipts import picture_crc

__all__ = ["ReferenceState", "ReferenceStats", "Receipt", "ReferenceStore", "MODES"]

log = logging.getLogger("jscc.refs")

MODES = ("feedback", "oneway", "intra")
MAX_BACK = 255  # a payload names its reference up to this many frame ids back


class _Codec(Protocol):  # what the reference state needs of a video codec
    def decode(self, payloads: Sequence[bytes | None], width: int, height: int,
               ref: np.ndarray | None = None) -> np.ndarray: ...

    def frame_info(self, payloads: Sequence[bytes | None]): ...


@dataclass(frozen=True)
class Receipt:
    frame_id: int
    received: tuple[bool, ...]  # per payload of the frame
    decoded: bool
    crc32: int


@dataclass
class _Sent:
    payloads: list[bytes]
    ref_id: int | None  # None: intra
    ref_picture: np.ndarray | None  # the picture it was predicted from (the object: see confirm)
    recon: np.ndarray | None = None  # the sender's decode with nothing lost (when it needs one)


@dataclass
class ReferenceStats:
    intra: int = 0
    predicted: int = 0
    optimistic: int = 0  # predicted from the previous frame before its receipt came
    resyncs: int = 0  # predicted from a confirmed picture after a reported loss
    receipts: int = 0
    confirmed: int = 0
    redecoded: int = 0  # receipts with losses: decoded again from what arrived
    mismatches: int = 0  # the receiver's CRC differed from the sender's decode
    rejected: int = 0  # receipts for frames not sent (forged, too old, wrong size)
    ref_back_sum: int = 0

    def summary(self) -> dict:
        d = dict(self.__dict__)
        d.pop("ref_back_sum")
        d["mean_ref_back"] = round(self.ref_back_sum / self.predicted, 2) if self.predicted else None
        return d


class ReferenceState:
    """The sender's side of reference sync (see the module docstring).

    ``optimism_loss``: in feedback mode, frames are predicted from the previous frame (before
    its receipt arrived) while at most this share of the last 16 receipts reported losses and
    none since the last resynchronisation did; 0 = always from a confirmed picture."""

    def __init__(self, codec: _Codec, width: int, height: int, mode: str = "feedback",
                 intra_period: int = 30, history: int = 64, silence_s: float = 1.0,
                 optimism_loss: float = 0.25) -> None:
        if mode not in MODES:
            raise ValueError(f"reference mode must be one of {', '.join(MODES)}, got {mode!r}")
        if intra_period < 1:
            raise ValueError("intra period must be at least 1")
        self.codec, self.width, self.height = codec, width, height
        self.mode, self.intra_period, self.history_size, self.silence_s = mode, intra_period, history, silence_s
        self.optimism_loss = optimism_loss
        self.stats = ReferenceStats()
        self._sent: OrderedDict[int, _Sent] = OrderedDict()
        self._exact: OrderedDict[int, np.ndarray] = OrderedDict()  # the receiver's pictures, known
        self._receipts: dict[int, Receipt] = {}
        self._recent_lossy: deque[bool] = deque(maxlen=16)
        self._chain_start: int | None = None  # first frame of the current optimistic chain
        self._broken = False  # a loss was reported inside the current chain
        self._reset = False  # the receiver lost its references (set by on_receipt)
        self._lock = threading.Lock()
        self._last_receipt = -1e9
        self._last_intra: int | None = None
        self._last_sent: int | None = None
        self._recon_due = False

    # --- feedback (event loop thread) ----------------------------------------------------
    def on_receipt(self, receipt: Receipt) -> None:
        """A receiver's report of one frame.  Cheap: the decode happens in :meth:`confirm`."""
        with self._lock:
            self.stats.receipts += 1
            sent = self._sent.get(receipt.frame_id)
            if sent is None or len(receipt.received) != len(sent.payloads):
                self.stats.rejected += 1
                return
            self._last_receipt = time.monotonic()
            if not receipt.decoded:
                # the receiver lacks that frame's reference (it restarted, or joined late):
                # nothing it holds is known any more
                self._reset = True
                self._receipts.clear()
                return
            self._receipts[receipt.frame_id] = receipt

    def forget(self) -> None:
        """A new receiver (started or restarted) holds none of the pictures confirmed so far:
        the next frame is intra (feedback: at the next :meth:`confirm`; oneway: at once)."""
        with self._lock:
            self._reset = True
            self._receipts.clear()
            self._last_intra = None

    # --- encoding (encoder thread) -------------------------------------------------------
    def effective_mode(self) -> str:
        """feedback falls back on oneway while the return path is silent."""
        if self.mode == "feedback" and time.monotonic() - self._last_receipt > self.silence_s:
            return "oneway"
        return self.mode

    def _optimistic(self) -> bool:
        if self.optimism_loss <= 0 or self._broken:
            return False
        return sum(self._recent_lossy) <= self.optimism_loss * max(len(self._recent_lossy), 1)

    def choose(self, frame_id: int) -> tuple[int | None, np.ndarray | None]:
        """(reference frame id, its picture) to predict ``frame_id`` from; (None, None): intra."""
        mode = self.effective_mode()
        if mode == "intra":
            return None, None
        self._reconstruct()
        last = self._last_sent
        prev = self._sent.get(last) if last is not None else None
        if mode == "oneway":
            due = self._last_intra is None or frame_id - self._last_intra >= self.intra_period
            if prev is None or due or frame_id - last > MAX_BACK or prev.recon is None:
                self._chain_start, self._broken = frame_id, False  # feedback may build on this intra frame
                return None, None
            return last, prev.recon
        self.confirm()
        if (prev is not None and prev.recon is not None and self._chain_start is not None and self._optimistic()
                and frame_id - last <= MAX_BACK):
            self.stats.optimistic += 1
            return last, prev.recon
        self._chain_start, self._broken = frame_id, False  # a new chain starts from what is known
        for fid in reversed(self._exact):
            if 0 < frame_id - fid <= MAX_BACK:
                self.stats.resyncs += 1
                return fid, self._exact[fid]
        return None, None

    def confirm(self) -> None:
        """Turn receipts into pictures known to be the receiver's.  A receipt whose picture is
        the sender's own loss-free decode costs nothing; of those that need a decode (losses,
        or no loss-free decode kept) only the newest is decoded: an older one could only ever
        serve as an older reference.  At most one decode a call, then.  The sender calls it
        right after a frame went out, off the next frame's capture-to-send path; :meth:`choose`
        calls it too."""
        self._reconstruct()
        if self.mode != "feedback":
            return
        with self._lock:
            receipts = sorted(self._receipts.values(), key=lambda r: r.frame_id)
            self._receipts.clear()
            reset, self._reset = self._reset, False
        if reset:
            self._exact.clear()
            self._broken = True
        pending: tuple[Receipt, _Sent] | None = None  # the newest receipt that needs a decode
        for r in receipts:
            sent = self._sent.get(r.frame_id)
            if sent is None:
                continue
            lossy = not all(r.received)
            self._recent_lossy.append(lossy)
            in_chain = self._chain_start is not None and r.frame_id >= self._chain_start
            if lossy or sent.recon is None:
                pending = (r, sent)
                self._broken |= in_chain and lossy  # later frames used a picture the receiver lacks
                continue
            picture = self._receiver_picture(r, sent)
            if picture is None:
                self._broken |= in_chain
            else:
                self._exact[r.frame_id] = picture
                self.stats.confirmed += 1
        if pending is not None and pending[0].frame_id > max(self._exact, default=-1):
            picture = self._receiver_picture(*pending)
            if picture is not None:
                self._exact[pending[0].frame_id] = picture
                self.stats.confirmed += 1
        while len(self._exact) > 16:
            self._exact.popitem(last=False)

    def known(self) -> dict[int, np.ndarray]:
        """The receiver's pictures the sender holds bit for bit, by frame id (newest 16)."""
        return dict(self._exact)

    def _receiver_picture(self, r: Receipt, sent: _Sent) -> np.ndarray | None:
        """The picture the receiver decoded for ``r``'s frame, if the sender can know it: its
        reference must be a picture known to be the receiver's, and the very one the frame was
        predicted from (a frame predicted from the previous frame's loss-free decode, whose
        receipt then reported losses, is not reproducible and is not used)."""
        base = None
        if sent.ref_id is not None:
            base = self._exact.get(sent.ref_id)
            if base is None or base is not sent.ref_picture:
                return None
        if all(r.received) and sent.recon is not None:
            picture = sent.recon
        else:
            payloads = [p if ok else None for p, ok in zip(sent.payloads, r.received)]
            picture = self.codec.decode(payloads, self.width, self.height, base)
            self.stats.redecoded += not all(r.received)
        crc = picture_crc(picture)
        if crc != r.crc32:
            self.stats.mismatches += 1
            log.warning("frame %d: the receiver's picture differs from the sender's decode of the same "
                        "payloads (CRC %08x vs %08x); not used as a reference", r.frame_id, r.crc32, crc)
            return None
        return picture

    def sent(self, frame_id: int, payloads: list[bytes], ref_id: int | None, ref: np.ndarray | None) -> None:
        """Record a frame just encoded (from ``ref``, the picture of ``ref_id``, unless the codec
        chose to code it intra: a scene cut)."""
        if ref_id is not None and not self.codec.frame_info(payloads).predicted:
            ref_id = ref = None
        if self._last_sent is None:
            self._last_receipt = time.monotonic()  # the return path has silence_s to speak up
        mode = self.effective_mode()
        # the next frame may predict from this one's loss-free decode: made by confirm(), after
        # the frame went out (or by the next choose() at the latest)
        self._recon_due = mode == "oneway" or (mode == "feedback" and self._optimistic())
        if ref_id is None:
            self.stats.intra += 1
            self._last_intra = frame_id
        else:
            self.stats.predicted += 1
            self.stats.ref_back_sum += frame_id - ref_id
        with self._lock:
            self._sent[frame_id] = _Sent(payloads, ref_id, ref)
            while len(self._sent) > self.history_size:
                self._sent.popitem(last=False)
        self._last_sent = frame_id

    def _reconstruct(self) -> None:
        """The last frame's loss-free decode, when :meth:`sent` found it will be needed."""
        if not self._recon_due or self._last_sent is None:
            return
        self._recon_due = False
        last = self._sent.get(self._last_sent)
        if last is not None and last.recon is None:
            last.recon = self.codec.decode(last.payloads, self.width, self.height, last.ref_picture)


class ReferenceStore:
    """Decoded pictures by frame id, for predicted frames to refer to (thread-safe)."""

    def __init__(self, capacity: int = 48) -> None:
        self.capacity = capacity
        self._pictures: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, frame_id: int, picture: np.ndarray) -> None:
        with self._lock:
            self._pictures[frame_id] = picture
            self._pictures.move_to_end(frame_id)
            while len(self._pictures) > self.capacity:
                self._pictures.popitem(last=False)

    def clear(self) -> None:
        """Forget every picture (a new stream, or its sender restarted)."""
        with self._lock:
            self._pictures.clear()

    def get(self, frame_id: int) -> np.ndarray | None:
        with self._lock:
            return self._pictures.get(frame_id)

    def decode(self, codec, frame_id: int, payloads: Sequence[bytes | None], width: int,
               height: int, reference_levels: int = 0) -> tuple[np.ndarray | None, Receipt, object]:
        """The receiver's step for one frame of a video codec: damaged payloads count as lost,
        a predicted frame decodes from the picture it names (not at all when that is not
        held), the picture is kept for later frames.  Returns (picture or None, the receipt
        for the sender, the codec's frame info).

        ``reference_levels`` > 0 (a relay's receivers, see ``StreamInfo.reference_levels``):
        the picture kept, and the receipt, are those of the payloads below that level only, the
        picture every receiver of the relay can hold; the picture shown uses every payload
        (a second decode when there are more)."""
        used = tuple(p is not None and codec.payload_ok(p) for p in payloads)
        payloads = [p if ok else None for p, ok in zip(payloads, used)]
        info = codec.frame_info(payloads)
        ref = self.get((frame_id - info.ref_back) & 0xFFFFFFFF) if info.predicted else None
        if info.predicted and ref is None:
            return None, Receipt(frame_id, used, False, 0), info
        base = _below(codec, payloads, reference_levels)
        kept = codec.decode(base, width, height, ref)
        self.put(frame_id, kept)
        shown = kept if base == payloads else codec.decode(payloads, width, height, ref)
        used = tuple(p is not None for p in base)
        return shown, Receipt(frame_id, used, True, picture_crc(kept)), info


def _below(codec, payloads: list[bytes | None], levels: int) -> list[bytes | None]:
    """``payloads`` with those of level ``levels`` and above left out (``levels`` 0: all kept)."""
    if levels <= 0:
        return payloads
    return [p if p is not None and codec.payload_levels([p])[0] < levels else None for p in payloads]
