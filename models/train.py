"""``jscc-train``: train the erasure-aware codec on folders of photographs.

CPU or CUDA automatically (mixed precision on CUDA), several GPUs through ``torchrun``
(DistributedDataParallel), checkpoints with ``--resume``, a fixed seed, a progress bar with ETA
and periodic validation PSNR.  Writes safetensors weights and a JSON model card.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jscc_stream.errors import UserError
from jscc_stream.cli import add_common_args, run_cli, setup_logging
from jscc_stream.netem.loss import LossProcess, TailDrop, parse_loss_spec

from .codec import CodecConfig, JSCCCodec
from .data import CropSampler, fit_frame, list_images, load_rgb, to_tensor
from .erasure import block_keep_mask, keep_mask, packet_losses
from .precision import PRECISIONS, resolve_precision
from .zoo import load_codec, save_codec

log = logging.getLogger("jscc.train")


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mse = F.mse_loss(x.clamp(0, 1), y, reduction="none").flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def _fragment_choices(spec: str) -> tuple[list[int], list[float]]:
    """'1,2,3' -> fragments per block drawn uniformly from those values."""
    try:
        vals = [int(v) for v in spec.split(",")]
    except ValueError:
        raise UserError(f"--fragments expects comma-separated integers, got {spec!r}") from None
    if not vals or min(vals) < 1:
        raise UserError("--fragments values must be >= 1")
    return vals, [1 / len(vals)] * len(vals)


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
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=128)
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
    add_common_args(p)
    return p


class WeightAverage:
    """Exponential moving average of a model's floating-point state (weights and buffers).

    What gets validated and shipped: it smooths out the last steps' gradient noise without a
    schedule change.  Decay 0 keeps the raw weights."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise UserError(f"--ema must be in [0, 1), got {decay}")
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()} if decay else {}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        if not self.decay:
            return
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))  # short warm-up
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.state[k].lerp_(v.detach(), 1 - d)
            else:
                self.state[k].copy_(v)

    def model(self, model: JSCCCodec) -> JSCCCodec:
        """``model`` itself (no averaging) or a copy holding the averaged weights."""
        if not self.decay:
            return model
        avg = copy.deepcopy(model)
        avg.load_state_dict(self.state)
        return avg

    def state_dict(self) -> dict:
        return {"state": self.state, "updates": self.updates}

    def load_state_dict(self, d: dict) -> None:
        if self.decay:
            self.state, self.updates = d["state"], int(d["updates"])


def _parse_swap(spec: str) -> tuple[tuple[int, int], ...]:
    """'1,2' -> ((1, 2),); 'none' -> ()."""
    if spec.strip().lower() == "none":
        return ()
    try:
        a, b = (int(v) for v in spec.split(","))
    except ValueError:
        raise ValueError(f"expected two channel numbers A,B or 'none', got {spec!r}") from None
    return ((a, b),)


def _chain_total(init: dict | None, total_key: str, own_key: str) -> float:
    """What the --init codec's card says it cost in all (its own run if it has no total)."""
    if not init:
        return 0
    return init.get(total_key) or init.get(own_key) or 0


def _ddp_setup() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def validation_set(files: list[Path]) -> torch.Tensor:
    return torch.cat([to_tensor(fit_frame(load_rgb(f), 320, 240)) for f in files])


@torch.no_grad()
def validate(model: JSCCCodec, val: torch.Tensor, loss: LossProcess, device: torch.device,
             seed: int = 1234) -> dict[str, float]:
    model.eval()
    x = val.to(device)
    h, w = model.latent_hw(*x.shape[-2:])
    clean = psnr(model(x), x).mean().item()
    only_first = torch.zeros(x.shape[0], model.cfg.blocks)
    only_first[:, 0] = 1
    first = block_keep_mask(only_first, model.cfg.alpha, h, w).to(device)
    first_block = psnr(model(x, first), x).mean().item()
    rng = np.random.default_rng(seed)
    lost = packet_losses(loss, x.shape[0] * 4, model.cfg.blocks, 1, rng)
    keep = keep_mask(lost, model.cfg.alpha, h, w, model.cfg.scr).to(device)
    lossy = psnr(model(x.repeat(4, 1, 1, 1), keep), x.repeat(4, 1, 1, 1)).mean().item()
    model.train()
    return {"psnr_all_blocks": round(clean, 3), "psnr_train_loss": round(lossy, 3),
            "psnr_first_block": round(first_block, 3)}


def train(args: argparse.Namespace) -> Path | None:
    rank, world, local_rank = _ddp_setup()
    if args.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but CUDA is not available")
    else:
        device = torch.device(args.device if args.device == "cpu" else f"cuda:{local_rank}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed + rank)
    rng = np.random.default_rng(args.seed + 7919 * rank)
    loss = parse_loss_spec(args.loss)
    frag_vals, frag_p = _fragment_choices(args.fragments)
    if not 0.0 <= args.first_block_share <= 1.0:
        raise UserError("--first-block-share must be between 0 and 1")
    n_first = round(args.first_block_share * args.batch)

    files: list[Path] = []
    for d in args.data:
        files += list_images(d)
    files = sorted(set(files))
    if len(files) <= args.val_count:
        raise UserError(f"need more than {args.val_count} images, found {len(files)}")
    val_files, train_files = files[-args.val_count:], files[: -args.val_count]
    sampler = CropSampler.from_files(train_files, crop=args.crop)
    val = validation_set(val_files)

    init_summary: dict | None = None
    if args.init:
        model, init_card = load_codec(args.init)
        if args.linear_taps and args.linear_taps != model.cfg.linear_taps:
            try:
                model = model.with_linear_taps(args.linear_taps)
            except ValueError as exc:
                raise UserError(f"--linear-taps: {exc}") from None
        init_from = init_card.get("name", str(args.init))
        init_summary = {k: init_card.get(k) for k in ("name", "sha256", "training_loss", "steps", "wall_time_s",
                                                       "total_steps", "total_wall_time_s",
                                                       "validation", "training_data", "init_from")}
    else:
        kw = {}
        if args.widths:
            kw["widths"] = tuple(int(v) for v in args.widths.split(","))
        try:
            cfg = CodecConfig(mca=not args.no_mca, scr=args.scr, linear_taps=args.linear_taps or 3, **kw)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        model, init_from = JSCCCodec(cfg), None
        if model.cfg.linear_path:
            s = model.cfg.stride
            crops = sampler.batch(max(64, 20000 * s * s // args.crop ** 2), np.random.default_rng(args.seed))
            patches = crops.unfold(2, s, s).unfold(3, s, s).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, s, s)
            model.init_linear_from_pca(patches)
    if args.no_mca and model.cfg.mca:
        raise UserError("--no-mca changes the architecture; it cannot apply to a model loaded with --init")
    if model.cfg.scr != args.scr:  # SCR is a byte order, not weights: fine-tuning may switch it
        model.cfg = dataclasses.replace(model.cfg, scr=args.scr)
    if args.checker_swap is not None:  # so is the checkerboard swap
        try:
            model.cfg = dataclasses.replace(model.cfg, checker_swap=_parse_swap(args.checker_swap))
        except ValueError as exc:
            raise UserError(f"--checker-swap: {exc}") from None
    model = model.to(device).train()
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    # The PCA-initialised encoder transform has fan-in 768: Adam's per-weight steps add up across
    # it, so it learns at a twentieth of the rate or the latent saturates and training collapses.
    # The decoder's synthesis (fan-in K*alpha*taps^2, no saturation downstream) can move faster:
    # its neighbour taps start at zero and must grow to interpolate.
    groups: dict[str, list[torch.nn.Parameter]] = {"encoder.linear.": [], "decoder.linear.": [], "": []}
    for n, prm in model.named_parameters():
        groups[next(g for g in groups if n.startswith(g))].append(prm)
    rates = {"encoder.linear.": 0.05, "decoder.linear.": 0.25, "": 1.0}
    opt = torch.optim.Adam([{"params": groups[g], "lr": args.lr * rates[g]} for g in groups], lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    try:
        amp_dtype = resolve_precision(args.precision, device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    use_amp = amp_dtype is not None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    model.to(memory_format=torch.channels_last)  # 2x faster convolutions on CPU

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / f"{args.name}.ckpt"
    step, wall_before, history, ema_state = 0, 0.0, [], None
    if args.resume:
        if not ckpt_path.exists():
            raise UserError(f"--resume: no checkpoint at {ckpt_path}")
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        step, wall_before = int(ck["step"]), float(ck["wall"])
        history = json.loads(ck["history"])
        ema_state = ck.get("ema")  # absent in checkpoints written before the weight average
        rng = np.random.default_rng([args.seed + 7919 * rank, step])
        torch.manual_seed(args.seed + rank + step)
        log.info("resumed %s at step %d", args.name, step)

    ema = WeightAverage(model, args.ema)
    if ema_state is not None:
        ema.load_state_dict(ema_state)
    h, w = model.latent_hw(args.crop, args.crop)
    t0 = time.time()
    from tqdm import tqdm

    bar = tqdm(total=args.steps, initial=step, desc=args.name, disable=rank != 0,
               dynamic_ncols=True, mininterval=5)

    def save_ckpt() -> None:
        if rank == 0:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(),
                        "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "step": step, "wall": wall_before + time.time() - t0,
                        "history": json.dumps(history)}, tmp)
            tmp.replace(ckpt_path)

    while step < args.steps:
        x = sampler.batch(args.batch, rng).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        frags = int(rng.choice(frag_vals, p=frag_p))
        frags = min(frags, args.crop // model.cfg.stride)  # at least one row of elements each
        lost = packet_losses(loss, args.batch, model.cfg.blocks, frags, rng)
        if args.tail_drop > 0:
            tail = TailDrop().sample(args.batch, model.cfg.blocks, rng)
            tail &= (rng.random(args.batch) < args.tail_drop)[:, None]
            lost |= tail[:, :, None]
        if n_first:
            lost[:n_first, 1:, :] = True
        keep = keep_mask(lost, model.cfg.alpha, h, w, model.cfg.scr).to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            x_hat = net(x, keep, noise=args.quant_noise)
            mse = F.mse_loss(x_hat.float(), x)
        opt.zero_grad(set_to_none=True)
        scaler.scale(mse).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ema.update(model)
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(psnr=f"{-10 * math.log10(max(mse.item(), 1e-10)):.2f}")
        if rank == 0 and (step % args.val_every == 0 or step == args.steps):
            metrics = {"step": step, **validate(ema.model(model), val, loss, device)}
            history.append(metrics)
            bar.write(f"[{args.name}] step {step}: val PSNR all blocks {metrics['psnr_all_blocks']:.2f} dB, "
                      f"under {loss} {metrics['psnr_train_loss']:.2f} dB, "
                      f"first block alone {metrics['psnr_first_block']:.2f} dB")
        if step % args.ckpt_every == 0 or step == args.steps:
            save_ckpt()
    bar.close()
    if rank != 0:
        return None
    card = {
        "architecture": model.cfg.arch,
        "blocks": model.cfg.blocks,
        "alpha": model.cfg.alpha,
        "stride": model.cfg.stride,
        "training_loss": str(loss),
        "training_fragments": args.fragments,
        "training_tail_drop": args.tail_drop,
        "training_first_block_share": args.first_block_share,
        "quant_noise": args.quant_noise,
        "ema_decay": args.ema,
        "init_from": init_from,
        "init": init_summary,
        # over the whole chain of --init runs (a fine-tune of a fine-tune counts every step)
        "total_steps": step + _chain_total(init_summary, "total_steps", "steps"),
        "total_wall_time_s": round(wall_before + time.time() - t0
                                   + _chain_total(init_summary, "total_wall_time_s", "wall_time_s"), 1),
        "training_data": [f.name for f in train_files],
        "validation_data": [f.name for f in val_files],
        "steps": step, "batch": args.batch, "crop": args.crop, "lr": args.lr, "seed": args.seed,
        "device": device.type, "world_size": world, "precision": str(amp_dtype or "fp32"),
        "wall_time_s": round(wall_before + time.time() - t0, 1),
        "validation": history[-1] if history else {},
        "validation_history": history,
        "parameters": model.param_count(),
    }
    path = save_codec(ema.model(model), out, args.name, card)
    log.info("wrote %s", path)
    return path


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    train(args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog="jscc-train")


if __name__ == "__main__":
    raise SystemExit(main())
