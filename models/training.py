"""Training the erasure-aware codec, as named steps: device, data split, model (fresh with a PCA
initialisation, or from --init), optimiser, resume, the training step, validation, model card.

``train(args)`` runs them for ``jscc-train`` (``models/train.py`` holds the command line); CPU or
CUDA (mixed precision on CUDA), several GPUs through ``torchrun`` (DistributedDataParallel).
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jscc_stream.errors import UserError
from jscc_stream.metrics import psnr_batch
from jscc_stream.netem.loss import LossProcess, TailDrop, parse_loss_spec
from jscc_stream.sources import fit_frame

from .codec import CodecConfig, JSCCCodec
from .data import CropSampler, list_images, load_rgb, to_tensor
from .erasure import block_received_mask, packet_losses, received_mask
from .frame_codec import pick_device
from .precision import resolve_precision
from .zoo import load_codec, save_codec

__all__ = ["WeightAverage", "validate", "validation_set", "train"]

log = logging.getLogger("jscc.train")


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


def fragment_choices(spec: str) -> tuple[list[int], list[float]]:
    """'1,2,3' -> fragments per block drawn uniformly from those values."""
    try:
        vals = [int(v) for v in spec.split(",")]
    except ValueError:
        raise UserError(f"--fragments expects comma-separated integers, got {spec!r}") from None
    if not vals or min(vals) < 1:
        raise UserError("--fragments values must be >= 1")
    return vals, [1 / len(vals)] * len(vals)


def validation_set(files: list[Path]) -> torch.Tensor:
    return torch.cat([to_tensor(fit_frame(load_rgb(f), 320, 240)) for f in files])


@torch.no_grad()
def validate(model: JSCCCodec, val: torch.Tensor, loss: LossProcess, device: torch.device,
             seed: int = 1234) -> dict[str, float]:
    model.eval()
    x = val.to(device)
    h, w = model.latent_hw(*x.shape[-2:])
    clean = psnr_batch(model(x), x).mean().item()
    only_first = torch.zeros(x.shape[0], model.cfg.blocks)
    only_first[:, 0] = 1
    first = block_received_mask(only_first, model.cfg.alpha, h, w).to(device)
    first_block = psnr_batch(model(x, first), x).mean().item()
    rng = np.random.default_rng(seed)
    lost = packet_losses(loss, x.shape[0] * 4, model.cfg.blocks, 1, rng)
    received = received_mask(lost, model.cfg.alpha, h, w, model.cfg.scr).to(device)
    lossy = psnr_batch(model(x.repeat(4, 1, 1, 1), received), x.repeat(4, 1, 1, 1)).mean().item()
    model.train()
    return {"psnr_all_blocks": round(clean, 3), "psnr_train_loss": round(lossy, 3),
            "psnr_first_block": round(first_block, 3)}


def split_images(folders: list[str], val_count: int) -> tuple[list[Path], list[Path]]:
    """(training files, validation files): the last ``val_count`` images by name are held out."""
    files = sorted({f for d in folders for f in list_images(d)})
    if len(files) <= val_count:
        raise UserError(f"need more than {val_count} images, found {len(files)}")
    return files[:-val_count], files[-val_count:]


def _from_init(args: argparse.Namespace) -> tuple[JSCCCodec, str, dict]:
    """The --init codec (its linear kernel widened when asked), its name and its card's summary."""
    model, init_card = load_codec(args.init)
    if args.linear_taps and args.linear_taps != model.cfg.linear_taps:
        try:
            model = model.with_linear_taps(args.linear_taps)
        except ValueError as exc:
            raise UserError(f"--linear-taps: {exc}") from None
    summary = {k: init_card.get(k) for k in ("name", "sha256", "training_loss", "steps", "wall_time_s",
                                             "total_steps", "total_wall_time_s",
                                             "validation", "training_data", "init_from")}
    return model, init_card.get("name", str(args.init)), summary


def _fresh(args: argparse.Namespace, sampler: CropSampler) -> JSCCCodec:
    """A new codec; its linear path initialised from the PCA of training patches."""
    kw = {}
    if args.widths:
        kw["widths"] = tuple(int(v) for v in args.widths.split(","))
    try:
        cfg = CodecConfig(mca=not args.no_mca, scr=args.scr, linear_taps=args.linear_taps or 3, **kw)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    model = JSCCCodec(cfg)
    if model.cfg.linear_path:
        s = model.cfg.stride
        crops = sampler.batch(max(64, 20000 * s * s // args.crop ** 2), np.random.default_rng(args.seed))
        patches = crops.unfold(2, s, s).unfold(3, s, s).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, s, s)
        model.init_linear_from_pca(patches)
    return model


def build_model(args: argparse.Namespace, sampler: CropSampler) -> tuple[JSCCCodec, str | None, dict | None]:
    """(model, init_from, init card summary): --init's codec or a fresh one, with the transmission
    order (--scr, --checker-swap) asked for."""
    model, init_from, init_summary = _from_init(args) if args.init else (_fresh(args, sampler), None, None)
    if args.no_mca and model.cfg.mca:
        raise UserError("--no-mca changes the architecture; it cannot apply to a model loaded with --init")
    if model.cfg.scr != args.scr:  # SCR is a byte order, not weights: fine-tuning may switch it
        model.cfg = dataclasses.replace(model.cfg, scr=args.scr)
    if args.checker_swap is not None:  # so is the checkerboard swap
        try:
            model.cfg = dataclasses.replace(model.cfg, checker_swap=_parse_swap(args.checker_swap))
        except ValueError as exc:
            raise UserError(f"--checker-swap: {exc}") from None
    return model, init_from, init_summary


def make_optimizer(model: JSCCCodec, lr: float, steps: int):
    """Adam with per-group rates and a warm-up + cosine schedule."""
    # The PCA-initialised encoder transform has fan-in 768: Adam's per-weight steps add up across
    # it, so it learns at a twentieth of the rate or the latent saturates and training collapses.
    # The decoder's synthesis (fan-in K*alpha*taps^2, no saturation downstream) can move faster:
    # its neighbour taps start at zero and must grow to interpolate.
    groups: dict[str, list[torch.nn.Parameter]] = {"encoder.linear.": [], "decoder.linear.": [], "": []}
    for n, prm in model.named_parameters():
        groups[next(g for g in groups if n.startswith(g))].append(prm)
    rates = {"encoder.linear.": 0.05, "decoder.linear.": 0.25, "": 1.0}
    opt = torch.optim.Adam([{"params": groups[g], "lr": lr * rates[g]} for g in groups], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    return opt, sched


@dataclass
class TrainState:
    """What a checkpoint carries besides the weights and the optimiser."""

    step: int = 0
    wall_before: float = 0.0  # seconds spent before this process (earlier runs of a resumed one)
    history: list = field(default_factory=list)  # validation results
    ema_state: dict | None = None


def resume(ckpt_path: Path, model: JSCCCodec, opt, sched) -> TrainState:
    """Load ``ckpt_path`` into model, optimiser and schedule; returns where training stood."""
    if not ckpt_path.exists():
        raise UserError(f"--resume: no checkpoint at {ckpt_path}")
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    sched.load_state_dict(ck["sched"])
    # the weight average is absent in checkpoints written before it existed
    return TrainState(int(ck["step"]), float(ck["wall"]), json.loads(ck["history"]), ck.get("ema"))


def draw_received(args: argparse.Namespace, model: JSCCCodec, loss: LossProcess, frag: tuple[list[int], list[float]],
              n_first: int, rng: np.random.Generator, hw: tuple[int, int]) -> torch.Tensor:
    """One batch's element-wise received mask: packet losses (fragments per block drawn), an
    occasional tail drop, and the first-block-only share."""
    frags = int(rng.choice(frag[0], p=frag[1]))
    frags = min(frags, args.crop // model.cfg.stride)  # at least one row of elements each
    lost = packet_losses(loss, args.batch, model.cfg.blocks, frags, rng)
    if args.tail_drop > 0:
        tail = TailDrop().sample(args.batch, model.cfg.blocks, rng)
        tail &= (rng.random(args.batch) < args.tail_drop)[:, None]
        lost |= tail[:, :, None]
    if n_first:
        lost[:n_first, 1:, :] = True
    return received_mask(lost, model.cfg.alpha, *hw, model.cfg.scr)


@dataclass
class _Run:
    """Everything the training loop works with."""

    args: argparse.Namespace
    model: JSCCCodec
    net: torch.nn.Module  # the model, or its DDP wrapper
    device: torch.device
    amp_dtype: torch.dtype | None
    opt: torch.optim.Optimizer
    sched: object
    scaler: object
    ema: WeightAverage
    loss: LossProcess
    rank: int


def train_step(run: _Run, x: torch.Tensor, received: torch.Tensor) -> float:
    """One optimiser step on batch ``x`` under the ``received`` mask; returns the batch MSE."""
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        x_hat = run.net(x, received, noise=run.args.quant_noise)
        mse = F.mse_loss(x_hat.float(), x)
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(mse).backward()
    run.scaler.unscale_(run.opt)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.sched.step()
    run.ema.update(run.model)
    return mse.item()


def save_checkpoint(run: _Run, state: TrainState, path: Path, t0: float) -> None:
    if run.rank == 0:
        tmp = path.with_suffix(".tmp")
        torch.save({"model": run.model.state_dict(), "ema": run.ema.state_dict(),
                    "opt": run.opt.state_dict(), "sched": run.sched.state_dict(),
                    "step": state.step, "wall": state.wall_before + time.time() - t0,
                    "history": json.dumps(state.history)}, tmp)
        tmp.replace(path)


def model_card(run: _Run, state: TrainState, t0: float, world: int, init_from: str | None,
               init_summary: dict | None, train_files: list[Path], val_files: list[Path]) -> dict:
    """The JSON card saved next to the weights: how, on what and how long the codec was trained."""
    args, model, loss, amp_dtype, device, step = run.args, run.model, run.loss, run.amp_dtype, run.device, state.step
    wall_before, history = state.wall_before, state.history
    return {
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


def _setup(args: argparse.Namespace) -> tuple[int, int, int, torch.device]:
    """DDP rank/world/local rank, the device, threads and seeds."""
    rank, world, local_rank = _ddp_setup()
    try:
        device = pick_device(args.device, rank=local_rank)
    except ValueError as exc:
        raise UserError(f"--device: {exc}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed + rank)
    return rank, world, local_rank, device


def _prepare(args: argparse.Namespace, model: JSCCCodec, device: torch.device, world: int, local_rank: int
             ) -> tuple[torch.nn.Module, torch.dtype | None]:
    model.to(device).train()
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    try:
        amp_dtype = resolve_precision(args.precision, device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    model.to(memory_format=torch.channels_last)  # 2x faster convolutions on CPU
    return net, amp_dtype


def train(args: argparse.Namespace) -> Path | None:
    """Run ``jscc-train``'s steps; returns the weights written (None on ranks other than 0)."""
    rank, world, local_rank, device = _setup(args)
    rng = np.random.default_rng(args.seed + 7919 * rank)
    loss = parse_loss_spec(args.loss)
    frag = fragment_choices(args.fragments)
    if not 0.0 <= args.first_block_share <= 1.0:
        raise UserError("--first-block-share must be between 0 and 1")
    n_first = round(args.first_block_share * args.batch)
    train_files, val_files = split_images(args.data, args.val_count)
    sampler = CropSampler.from_files(train_files, crop=args.crop)
    val = validation_set(val_files)
    model, init_from, init_summary = build_model(args, sampler)
    net, amp_dtype = _prepare(args, model, device, world, local_rank)
    opt, sched = make_optimizer(model, args.lr, args.steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / f"{args.name}.ckpt"
    state = TrainState()
    if args.resume:
        state = resume(ckpt_path, model, opt, sched)
        rng = np.random.default_rng([args.seed + 7919 * rank, state.step])
        torch.manual_seed(args.seed + rank + state.step)
        log.info("resumed %s at step %d", args.name, state.step)
    ema = WeightAverage(model, args.ema)
    if state.ema_state is not None:
        ema.load_state_dict(state.ema_state)
    run = _Run(args, model, net, device, amp_dtype, opt, sched, scaler, ema, loss, rank)
    t0 = time.time()
    _loop(run, state, sampler, val, frag, n_first, rng, ckpt_path, t0)
    if rank != 0:
        return None
    card = model_card(run, state, t0, world, init_from, init_summary, train_files, val_files)
    path = save_codec(ema.model(model), out, args.name, card)
    log.info("wrote %s", path)
    return path


def _loop(run: _Run, state: TrainState, sampler: CropSampler, val: torch.Tensor, frag, n_first: int,
          rng: np.random.Generator, ckpt_path: Path, t0: float) -> None:
    """Train until ``args.steps``, validating and checkpointing on the way."""
    from tqdm import tqdm

    args, model = run.args, run.model
    hw = model.latent_hw(args.crop, args.crop)
    bar = tqdm(total=args.steps, initial=state.step, desc=args.name, disable=run.rank != 0,
               dynamic_ncols=True, mininterval=5)
    while state.step < args.steps:
        x = sampler.batch(args.batch, rng).to(run.device, non_blocking=True).contiguous(
            memory_format=torch.channels_last)
        received = draw_received(args, model, run.loss, frag, n_first, rng, hw).to(run.device)
        mse = train_step(run, x, received)
        state.step += 1
        bar.update(1)
        if state.step % 50 == 0:
            bar.set_postfix(psnr=f"{-10 * math.log10(max(mse, 1e-10)):.2f}")
        if run.rank == 0 and (state.step % args.val_every == 0 or state.step == args.steps):
            metrics = {"step": state.step, **validate(run.ema.model(model), val, run.loss, run.device)}
            state.history.append(metrics)
            bar.write(f"[{args.name}] step {state.step}: val PSNR all blocks {metrics['psnr_all_blocks']:.2f} dB, "
                      f"under {run.loss} {metrics['psnr_train_loss']:.2f} dB, "
                      f"first block alone {metrics['psnr_first_block']:.2f} dB")
        if state.step % args.ckpt_every == 0 or state.step == args.steps:
            save_checkpoint(run, state, ckpt_path, t0)
    bar.close()
