"""``jscc-train``: train the erasure-aware codec on folders of photographs (the steps: ``training.py``).

CPU or CUDA automatically (mixed precision on CUDA), several GPUs through ``torchrun``
(DistributedDataParallel), checkpoints with ``--resume``, a fixed seed, a progress bar with ETA
and periodic validation PSNR.  Writes safetensors weights and a JSON model card.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jscc_stream.cli import add_common_args, entry_point, parse_args
from jscc_stream.errors import UserError

from .precision import PRECISIONS
from .training import train

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jscc-train",
        description="Train the erasure-aware JSCC codec. The loss process (--loss) is what the "
                    "codec learns to survive: uniform:P (random loss), ladder/steep/eps:... "
                    "(per-block importance), ge:p,r,h,k (bursty), taildrop (progressive).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="folder of training photographs (repeatable); see scripts/fetch_training_data.sh")
    p.add_argument("--val-count", type=int, default=2,
                   help="images held out of --data for validation (the last ones by name)")
    p.add_argument("--name", required=True, help="model name (weights NAME-HASH.safetensors)")
    p.add_argument("--out", default="runs", help="output folder for weights, card and checkpoint")
    p.add_argument("--loss", default="uniform:0.1", help="training erasure process")
    p.add_argument("--fragments", default="1,1,2,3",
                   help="packets per block to simulate, drawn per batch from this list")
    p.add_argument("--tail-drop", type=float, default=0.0, metavar="P",
                   help="probability that a training frame also loses a random tail of blocks (as a "
                        "congested network dropping the least important ones; paper 001 mixes "
                        "tail-drop with packet loss the same way)")
    p.add_argument("--first-block-share", type=float, default=0.0, metavar="F",
                   help="fraction of each batch decoded from its first block alone (the worst case "
                        "a priority-dropping network leaves a ladder codec; raises that floor)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 20000; 3000 with --channel)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=None, help="training crop side (default 128; 64 with --channel)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--quant-noise", type=float, default=0.0,
                   help="uniform noise step added to the latent in training (0 = real-valued as "
                        "paper 000; 1/255 simulates 8-bit quantization)")
    p.add_argument("--ema", type=float, default=0.999, metavar="DECAY",
                   help="validate and save an exponential moving average of the weights (0 = the raw "
                        "weights): batch-of-8 gradient noise makes single snapshots jumpy")
    p.add_argument("--init", default=None, help="start from these weights (name or path)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/NAME.ckpt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast precision: auto = fp16 on CUDA, bf16 on CPUs that support it "
                        "(about 2x faster on AVX512-BF16), else fp32")
    p.add_argument("--widths", default=None, help="override encoder/decoder widths, e.g. 32,64,96,128")
    p.add_argument("--linear-taps", type=int, default=None, metavar="K",
                   help="kernel of the decoder's linear synthesis in latent elements (1 = block PCA, "
                        "3 = overlapping, interpolates across patch borders); with --init, widens "
                        "the loaded codec's kernel (default: 3 for a new codec, the loaded one's with --init)")
    p.add_argument("--checker-swap", default=None, metavar="A,B",
                   help="latent channels A and B trade elements at odd checkerboard positions, so the "
                        "block holding A also carries half of B (1,2: the first block gets both chroma "
                        "DCs at half density; 'none' clears it); a transmission order, like --scr")
    p.add_argument("--no-mca", action="store_true", help="ablation: decoder ignores the mask")
    p.add_argument("--scr", action="store_true",
                   help="train for the SCR byte order in packets (paper 001; off by default, see docs/codec.md)")
    a = p.add_argument_group("analog codec over an AWGN channel (paper 002)")
    a.add_argument("--channel", default=None, metavar="awgn:SNR_DB",
                   help="train the analog codec instead: its power-normalised latent goes through AWGN at "
                        "this SNR (values sent as float16; see docs/papers.md)")
    a.add_argument("--objective", default="ae", choices=["ae", "vae", "vscc"],
                   help="ae: MSE only; vae: + KL to N(0,1); vscc: + KL to N(0, sigma_noise^2 + CMC) (eq. 10)")
    a.add_argument("--cmc", type=float, default=5.0, metavar="D", help="VSCC's channel matching constant d")
    a.add_argument("--kl-weight", type=float, default=1e-3,
                   help="weight of the mean KL per latent value against the per-pixel MSE (vae, vscc)")
    a.add_argument("--analog-channels", type=int, default=4,
                   help="latent channels per 4x4 pixels (bandwidth ratio k/n = C/48)")
    add_common_args(p)
    return p


def _main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--arch" in args:  # jscc-train --arch rd ...: the entropy-coded codec's trainer
        i = args.index("--arch")
        arch = args[i + 1] if i + 1 < len(args) else ""
        if arch not in ("rd", "fixed"):
            raise UserError(f"--arch must be rd (entropy-coded codec) or fixed (papers 000/001), got {arch!r}")
        del args[i:i + 2]
        if arch == "rd":
            from .rd_train import main as rd_main

            return rd_main(args)
    ns = parse_args(build_parser, args)
    analog = ns.channel is not None
    if analog:
        from .analog_train import ANALOG_DEFAULTS, train_analog

        ns.crop = ns.crop or ANALOG_DEFAULTS["crop"]
        ns.steps = ns.steps or ANALOG_DEFAULTS["steps"]
        train_analog(ns)
        return 0
    ns.crop, ns.steps = ns.crop or 128, ns.steps or 20000
    train(ns)
    return 0


main = entry_point(_main, "jscc-train")


if __name__ == "__main__":
    raise SystemExit(main())
