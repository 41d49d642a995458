"""Training the analog codec (paper 002) for ``jscc-train --channel awgn:SNR_DB``: AE, VAE or VSCC
objective (:mod:`.analog`), the photographs and validation split of the erasure codec's trainer,
checkpoints with ``--resume``, and a model card beside the safetensors weights."""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from jscc_stream.errors import UserError
from jscc_stream.netem.awgn import AwgnChannel, parse_channel_spec

from .analog import AnalogCodec, AnalogConfig, kl_terms, objective_loss
from .data import CropSampler
from .frame_codec import pick_device
from .training import TrainState, resume, split_images, validation_set
from .zoo import save_codec

__all__ = ["train_analog", "load_training_data", "knowledge_base_variance", "analog_psnr", "ANALOG_DEFAULTS"]

log = logging.getLogger("jscc.train")

#: jscc-train's defaults for an analog codec (crop, steps) where the erasure codec's differ.
ANALOG_DEFAULTS = {"crop": 64, "steps": 3000}


@torch.no_grad()
def knowledge_base_variance(model: AnalogCodec, sampler: CropSampler, rng: np.random.Generator,
                            device: torch.device, batches: int = 8, batch: int = 32) -> torch.Tensor:
    """The training crops' average sender variance per latent channel: what the receiver
    resamples with when only means travel (the paper's fixed-variance test)."""
    if not model.variational:
        return torch.zeros(model.cfg.channels)
    total = torch.zeros(model.cfg.channels, device=device)
    for _ in range(batches):
        _, logvar = model.encode(sampler.batch(batch, rng).to(device))
        total += logvar.exp().mean((0, 2, 3))
    return (total / batches).cpu()


@torch.no_grad()
def analog_psnr(model: AnalogCodec, images: torch.Tensor, channel: AwgnChannel, seed: int = 0) -> float:
    """Mean PSNR (dB, 8-bit rounded) of ``images`` sent through ``channel`` (test pass)."""
    from jscc_stream.metrics import psnr_batch

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = model.transmit(images, channel.noise_var, gen)
    return psnr_batch(out, images, round_to_8bit=True).mean().item()


def _check(args: argparse.Namespace) -> tuple[AwgnChannel, AnalogConfig]:
    """The channel and architecture asked for, user mistakes first."""
    channel = parse_channel_spec(args.channel)
    if args.objective == "vscc" and not args.cmc > 0:
        raise UserError(f"--cmc (the channel matching constant d) must be > 0, got {args.cmc}")
    if args.kl_weight < 0:
        raise UserError("--kl-weight must be >= 0")
    try:
        cfg = AnalogConfig(channels=args.analog_channels, objective=args.objective)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.crop % cfg.stride:
        raise UserError(f"--crop must be a multiple of {cfg.stride} for the analog codec")
    return channel, cfg


def _card(args: argparse.Namespace, model: AnalogCodec, channel: AwgnChannel, step: int, wall: float,
          device: torch.device, val_psnr: float, files: tuple[list[Path], list[Path]]) -> dict:
    """The JSON model card: objective, channel, budget, data and the validation PSNR."""
    return {"kind": "analog-f16", "objective": args.objective, "training_channel": str(channel),
            "training_snr_db": channel.snr_db, "cmc": args.cmc if args.objective == "vscc" else None,
            "kl_weight": args.kl_weight if model.variational else 0.0,
            "bandwidth_ratio": round(model.cfg.bandwidth_ratio, 5), "kb_var": model.kb_var.tolist(),
            "steps": step, "batch": args.batch, "crop": args.crop, "lr": args.lr, "seed": args.seed,
            "device": device.type, "wall_time_s": round(wall, 1), "parameters": model.param_count(),
            "validation": {"psnr_at_training_snr": round(val_psnr, 3)},
            "training_data": [f.name for f in files[0]], "validation_data": [f.name for f in files[1]]}


def load_training_data(args: argparse.Namespace) -> tuple[tuple[list[Path], list[Path]], CropSampler]:
    """((training files, validation files), crop sampler) for ``--data``; shareable between runs."""
    files = split_images(args.data, args.val_count)
    return files, CropSampler.from_files(files[0], crop=args.crop)


def train_analog(args: argparse.Namespace,
                 data: tuple[tuple[list[Path], list[Path]], CropSampler] | None = None) -> Path:
    """Train an analog codec as ``args`` says (on ``data`` from :func:`load_training_data` when
    given, so a sweep loads the photographs once); returns the weights written."""
    channel, cfg = _check(args)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        raise UserError(f"--device: {exc}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    files, sampler = data or load_training_data(args)
    model = AnalogCodec(cfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / f"{args.name}.ckpt"
    state = resume(ckpt, model, opt, sched) if args.resume else TrainState()
    step, wall = state.step, state.wall_before
    rng = np.random.default_rng([args.seed, step])
    t0 = time.time()
    step = _loop(args, model, opt, sched, sampler, channel, rng, device, step, ckpt, lambda: wall + time.time() - t0)
    model.kb_var.copy_(knowledge_base_variance(model, sampler, rng, device))
    val = validation_set(files[1]).to(device)
    card = _card(args, model, channel, step, wall + time.time() - t0, device,
                 analog_psnr(model, val, channel, args.seed), files)
    path = save_codec(model.cpu(), out, args.name, card)
    log.info("wrote %s (validation PSNR %.2f dB at %s)", path, card["validation"]["psnr_at_training_snr"], channel)
    return path


def _loop(args: argparse.Namespace, model: AnalogCodec, opt, sched, sampler: CropSampler, channel: AwgnChannel,
          rng: np.random.Generator, device: torch.device, step: int, ckpt: Path, wall) -> int:
    """Optimiser steps until ``args.steps``, checkpointing every ``--ckpt-every``."""
    from tqdm import tqdm

    bar = tqdm(total=args.steps, initial=step, desc=args.name, dynamic_ncols=True, mininterval=5,
               disable=getattr(args, "quiet", False))
    while step < args.steps:
        x = sampler.batch(args.batch, rng).to(device)
        x_hat, mu, logvar = model(x, channel.noise_var)
        kl = kl_terms(model.cfg.objective, mu, logvar, channel.noise_var, args.cmc)
        loss, parts = objective_loss(x, x_hat, kl, args.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(psnr=f"{-10 * math.log10(max(parts['mse'], 1e-10)):.2f}", kl=f"{parts['kl']:.3f}")
        if step % args.ckpt_every == 0 or step == args.steps:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "step": step, "wall": wall(), "history": "[]"}, tmp)
            tmp.replace(ckpt)
    bar.close()
    return step
