"""Turn a packet-loss process into element-wise ``received`` masks over the latent (1 = arrived).

A block's ``alpha*h*w`` bytes travel in wire order (``scr.wire_order``) and may be cut into
several packets (fragments).  A lost fragment erases exactly the elements it carried, so the
mask is element-wise.  Packets are numbered block-major (block 0's fragments first), which is
the order the sender transmits them in; bursty processes (Gilbert-Elliott) run over that order,
per-block profiles (erasure vectors of length K, tail-drop) apply to every fragment of a block.
"""

from __future__ import annotations

import numpy as np
import torch

from jscc_stream.netem.loss import ErasureVector, LossProcess, TailDrop
from jscc_stream.proto.packetizer import fragment_cuts

from .scr import wire_order

__all__ = ["fragment_of_element", "packet_losses", "received_mask", "block_received_mask"]


def fragment_of_element(alpha: int, h: int, w: int, fragments: int, scr: bool) -> np.ndarray:
    """For each element of a block (natural order), the index of the fragment carrying it when
    the wire bytes are cut into ``fragments`` pieces exactly as the packetizer cuts them."""
    n = alpha * h * w
    if not 1 <= fragments <= n:
        raise ValueError(f"fragments must be in 1..{n}, got {fragments}")
    frag_of_wire = np.repeat(np.arange(fragments), np.diff(fragment_cuts(n, fragments)))
    out = np.empty(n, dtype=np.int64)
    out[wire_order(alpha, h, w, scr)] = frag_of_wire
    return out


def packet_losses(process: LossProcess, n: int, blocks: int, fragments: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Lost flags ``(n, blocks, fragments)`` for n frames: the channel's draws (True = lost), as
    the loss processes and traces write them; :func:`received_mask` turns them into the mask."""
    if isinstance(process, TailDrop):
        per_block = process.sample(n, blocks, rng)
        return np.repeat(per_block[:, :, None], fragments, axis=2)
    if isinstance(process, ErasureVector) and len(process.eps) == blocks:
        # each fragment independently, with the erasure probability of its block
        draws = process.sample(n * fragments, blocks, rng).reshape(n, fragments, blocks)
        return np.ascontiguousarray(draws.transpose(0, 2, 1))
    return process.sample(n, blocks * fragments, rng).reshape(n, blocks, fragments)


def received_mask(lost: np.ndarray, alpha: int, h: int, w: int, scr: bool) -> torch.Tensor:
    """Packet losses ``(n, K, F)`` -> float received mask ``(n, K*alpha, h, w)`` (1 = arrived)."""
    n, k, f = lost.shape
    frag = torch.from_numpy(fragment_of_element(alpha, h, w, f, scr))
    received_frag = torch.from_numpy(~lost).float()  # (n, K, F)
    received = received_frag[:, :, frag]  # (n, K, alpha*h*w)
    return received.reshape(n, k * alpha, h, w)


def block_received_mask(received: torch.Tensor, alpha: int, h: int, w: int) -> torch.Tensor:
    """Whole-block received mask: ``received`` bool/float ``(n, K)`` -> ``(n, K*alpha, h, w)``."""
    n, k = received.shape
    return received.float()[:, :, None, None, None].expand(n, k, alpha, h, w).reshape(n, k * alpha, h, w)
