"""Rate-distortion training of :class:`.transform.RDCodec` (``jscc-train --arch rd``).

One model serves every rate: each sample draws a rate index (the quantizer step ``q``), and the
loss is ``MSE / q**2 + gamma * bpp``, the high-rate Lagrangian of a uniform quantizer divided
by ``q**2`` so that every rate weighs the same (``gamma = 2 ln 2 / 12 * 256 / 768`` for an
orthonormal 16x16 RGB transform).  Erasures are simulated as the packet API makes them: each
level's positions are split into a few random groups (one packet each) and each packet is lost
with the sample's loss rate; the ``ladder`` schedule also keeps only the first ``j`` levels.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from jscc_stream.metrics import psnr_batch

from .data import CropSampler, list_images
from .transform import RDCodec, RDConfig, q_of_index

log = logging.getLogger("jscc.rd_train")

GAMMA = 2 * math.log(2) / 12 * 256 / 768
# (columns, rows) of the payload lattices a level is split into (packet_codec.lattice)
LATTICES = ((1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (4, 2))
ERASED_Q_FLOOR = 0.3


@dataclass
class ErasureSchedule:
    """How training samples lose packets.  ``max_loss``: per-sample packet-loss rate drawn
    uniformly in [0, max_loss] for a ``lossy_share`` of samples; ``ladder_share``: share of
    samples that keep only a random prefix of levels (the rest nothing lost)."""

    max_loss: float = 0.0
    lossy_share: float = 0.0
    ladder_share: float = 0.0

    @classmethod
    def named(cls, name: str) -> "ErasureSchedule":
        table = {
            "none": cls(),
            "uniform": cls(max_loss=0.3, lossy_share=0.6),
            "ladder": cls(max_loss=0.2, lossy_share=0.3, ladder_share=0.4),
        }
        if name not in table:
            raise ValueError(f"erasure schedule must be one of {sorted(table)}, got {name!r}")
        return table[name]

    def received(self, n: int, levels: int, h: int, w: int, rng: np.random.Generator) -> torch.Tensor:
        """``(n, levels, h, w)`` float received mask, 1 = the element's packet arrived."""
        out = np.ones((n, levels, h, w), dtype=np.float32)
        for i in range(n):
            r = rng.random()
            if r < self.ladder_share:
                out[i, rng.integers(1, levels + 1):] = 0
            elif r < self.ladder_share + self.lossy_share:
                eps = rng.uniform(0, self.max_loss)
                for lv in range(levels):
                    # groups on the lattice the packet codec deals positions on
                    a, b = LATTICES[rng.integers(len(LATTICES))]
                    lost = rng.random((b, a)) < eps
                    out[i, lv] = ~np.tile(lost, (-(-h // b), -(-w // a)))[:h, :w]
        return torch.from_numpy(out)


def klt_patches(sampler: CropSampler, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``(n, 768)`` random 16x16 RGB patches (conv-weight order) for the KLT."""
    crops = sampler.batch(max(1, n // 64), rng)[:, :3]  # 128x128 crops hold 64 patches each
    p = crops.unfold(2, 16, 16).unfold(3, 16, 16)  # N,3,8,8,16,16
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * 256)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jscc-train --arch rd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of training photographs")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log, weights)")
    p.add_argument("--name", default="uniform", help="codec name written to the model card")
    p.add_argument("--erasures", default="uniform", help="none | uniform | ladder")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gamma", type=float, default=GAMMA, help="rate weight (default %(default).4f)")
    p.add_argument("--channels", type=int, default=192)
    p.add_argument("--levels", default="4,8,12,20,36,48,64")
    p.add_argument("--latent-width", type=int, default=96)
    p.add_argument("--pixel-width", type=int, default=32)
    p.add_argument("--analysis-width", type=int, default=0)
    p.add_argument("--q-min", type=float, default=0.0283, help="finest quantizer step trained")
    p.add_argument("--q-max", type=float, default=1.81, help="coarsest quantizer step trained")
    p.add_argument("--val-images", type=int, default=3, help="photographs held out for validation")
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (under torchrun: one GPU per rank)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt")
    p.add_argument("--inter", action="store_true",
                   help="train the predicted-frame model: it codes motion-compensated residuals of frame "
                        "pairs (photographs under synthetic camera motion, and --clips) instead of images")
    p.add_argument("--clips", help="with --inter: a folder of real video clips to draw half of the pairs from")
    p.add_argument("--init", help="start from these shipped weights (name or .safetensors) instead of a KLT")
    p.add_argument("--context", type=int, choices=[0, 48],
                   help="with --inter: 48 = the decoder's refinement CNN also reads the prediction (conditional "
                        "coding); 0 = a plain residual model (default: as --init's model, else 0)")
    p.add_argument("--intra", default="uniform",
                   help="with --inter: the intra codec the model card names (what a stream's I-frames use)")
    p.add_argument("--export", metavar="DIR", help="write OUT/last.ckpt's averaged weights as "
                   "NAME-HASH.safetensors + NAME.json into DIR and exit (no training)")
    return p


def export(run: Path, out_dir: Path, name: str) -> Path:
    """The checkpoint's weight average (EMA) as shipped weights with a model card."""
    from .zoo import save_codec

    ck = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    model = RDCodec(RDConfig.from_dict(ck["config"]))
    model.load_state_dict(ck["ema"])
    a = ck["args"]
    last_val = {}
    log_path = run / "train.log"
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            rec = json.loads(line)
            if "psnr@64" in rec:
                last_val = {k: v for k, v in rec.items() if "@" in k}
    card = {"architecture": model.cfg.arch, "trainer": "jscc-train --arch rd",
            "erasures": a["erasures"], "steps": ck["step"], "wall_time_s": round(ck["wall"]),
            "batch": a["batch"], "crop": a["crop"], "lr": a["lr"], "gamma": a["gamma"],
            "q_range": [a["q_min"], a["q_max"]], "data": a["data"], "ema_decay": 0.999,
            "images": f"{len(list_images(a['data'])) - a['val_images']} for training, {a['val_images']} held out "
                      "for validation" if Path(a["data"]).is_dir() else "unknown",
            "validation (held-out crops, 256x256, EMA)": last_val}
    if a.get("inter"):
        card.update(role="inter", intra=a.get("intra", "uniform"), clips=a.get("clips"),
                    samples="motion-compensated residuals: photographs under synthetic camera motion"
                            + (" and real video clips" if a.get("clips") else ""))
    return save_codec(model, out_dir, name, card)


def validate(model: RDCodec, val: torch.Tensor, q_indexes: tuple[int, ...]) -> dict[str, float]:
    model.eval()
    out = {}
    with torch.no_grad():
        for qi in q_indexes:
            q = torch.full((len(val),), float(q_of_index(qi)), device=val.device)
            x, ctx = split_context(val, model.cfg.context)
            r = model(x, q, context=ctx)
            out[f"psnr@{qi}"] = float(psnr_batch(r.x_hat, x).mean())
            out[f"bpp@{qi}"] = float(r.bits.mean() / (val.shape[2] * val.shape[3]))
    model.train()
    return out


@dataclass
class _Run:
    """What one training run holds between steps (built by :func:`_start`)."""

    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    cfg: RDConfig
    model: RDCodec
    ema: RDCodec
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    sampler: CropSampler  # or inter_data.ResidualSampler (same batch())
    val: torch.Tensor
    schedule: ErasureSchedule
    rng: np.random.Generator
    step: int
    t_start: float
    ckpt_path: Path


def _device(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    from .frame_codec import pick_device
    from .training import _ddp_setup

    from jscc_stream.errors import UserError

    rank, world, local = _ddp_setup()
    try:
        return rank, world, pick_device(args.device, rank=local if world > 1 else None)
    except ValueError as exc:
        raise UserError(f"--device: {exc}") from None


def _optimiser(model: RDCodec, args: argparse.Namespace, step: int):
    # the KLT transform is already good, and Adam moves every weight by ~lr a step whatever its
    # size: at 1e-4 the 0.04-sized KLT weights drifted off within 2000 steps (worse than the
    # untrained KLT at the same bytes); the transform moves a hundred times slower than the CNNs
    linear = [model.analysis.weight, model.analysis.bias, model.synthesis.weight, model.synthesis.bias]
    rest = [p for p in model.parameters() if all(p is not t for t in linear)]
    opt = torch.optim.Adam([{"params": rest}, {"params": linear, "lr": args.lr * 0.01}], lr=args.lr)
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])
    warm_cosine = lambda s: min(1.0, (s + 1) / 500) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))  # noqa: E731
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, warm_cosine, last_epoch=step - 1)


def _start(args: argparse.Namespace) -> _Run:
    """Data, model (KLT-initialised or resumed), weight average, optimiser."""
    rank, world, device = _device(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed + 1000 * rank)
    torch.manual_seed(args.seed)
    ckpt_path = out / "last.ckpt"
    ck = torch.load(ckpt_path, map_location=device, weights_only=False) if args.resume and ckpt_path.exists() else None
    init = None
    if ck:  # the checkpoint's architecture, whatever the flags say
        cfg = RDConfig.from_dict(ck["config"])
    elif args.init:
        from .zoo import load_codec

        init, _ = load_codec(args.init, device="cpu")
        cfg = replace(init.cfg, context=args.context) if args.context is not None else init.cfg
    else:
        cfg = RDConfig(channels=args.channels, levels=tuple(int(v) for v in args.levels.split(",")),
                       latent_width=args.latent_width, pixel_width=args.pixel_width,
                       analysis_width=args.analysis_width, context=args.context or 0)
    sampler, val = _samplers(args, cfg.context)
    val = val.to(device)
    model = RDCodec(cfg)
    if ck:
        model.load_state_dict(ck["model"])
        rng = np.random.default_rng(args.seed + ck["step"] + 1000 * rank)
    elif init is not None:
        model.load_widened(init.state_dict())
    else:
        model.init_from_klt(klt_patches(sampler, 40000, rng))
    model.to(device)
    ema = RDCodec(cfg).to(device)
    ema.load_state_dict(ck["ema"] if ck else model.state_dict())
    step = ck["step"] if ck else 0
    opt, sched = _optimiser(model, args, step)
    if ck:
        opt.load_state_dict(ck["opt"])
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    return _Run(args, rank, world, device, cfg, model, ema, net, opt, sched, sampler, val,
                ErasureSchedule.named(args.erasures), rng, step, time.monotonic() - (ck["wall"] if ck else 0.0),
                ckpt_path)


def _samplers(args: argparse.Namespace, context: int = 0):
    """(training sampler, validation batch): photographs, or with ``--inter`` residuals of
    frame pairs (the last ``--val-images`` photographs held out either way)."""
    files = list_images(args.data)
    photos = CropSampler.from_files(files[args.val_images:], args.crop)
    held_out = CropSampler.from_files(files[: args.val_images], 256)
    if not args.inter:
        return photos, held_out.batch(8, np.random.default_rng(123))
    from .inter_data import ResidualSampler, load_clips

    clips = load_clips(args.clips) if args.clips else []
    if args.clips and not clips:
        raise FileNotFoundError(f"no readable video clips in {args.clips}")
    with_pred = bool(context)
    return (ResidualSampler(photos, clips, with_prediction=with_pred),
            ResidualSampler(held_out, with_prediction=with_pred).batch(8, np.random.default_rng(123)))


def split_context(batch: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(what the model codes, the prediction its decoder reads) of a conditional model's batch."""
    if not context:
        return batch, None
    return batch[:, :3], batch[:, 3:]


def _train_step(run: _Run) -> dict:
    """One batch; returns what the log line reports."""
    a, hw = run.args, run.args.crop // 16
    x, ctx = split_context(run.sampler.batch(a.batch, run.rng).to(run.device), run.cfg.context)
    # log-uniform steps: every rate the rate control may pick is trained alike
    q = torch.from_numpy(np.exp(run.rng.uniform(math.log(a.q_min), math.log(a.q_max), a.batch))).float().to(run.device)
    received = run.schedule.received(a.batch, run.cfg.n_levels, hw, hw, run.rng).to(run.device)
    r = run.net(x, q, received, ctx)
    mse = ((r.x_hat - x) ** 2).mean(dim=(1, 2, 3))
    bpp = r.bits / (a.crop * a.crop)
    # an erasure's distortion does not shrink with q: weigh it as at a mid rate, or the
    # finest-step samples with losses would dominate the batch
    erased = (received < 1).flatten(1).any(1)
    norm = torch.where(erased, q.clamp_min(ERASED_Q_FLOOR), q) ** 2
    loss = (mse / norm + a.gamma * bpp).mean()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 5.0)
    run.opt.step()
    run.sched.step()
    run.step += 1
    with torch.no_grad():
        for pe, pm in zip(run.ema.parameters(), run.model.parameters()):
            pe.lerp_(pm, 1 - 0.999 if run.step > 1000 else 1.0)
        for be, bm in zip(run.ema.buffers(), run.model.buffers()):
            be.copy_(bm)
    return {"step": run.step, "loss": float(loss.detach()), "psnr": float(psnr_batch(r.x_hat.detach(), x).mean()),
            "bpp": float(bpp.detach().mean()), "lr": run.sched.get_last_lr()[0],
            "erased": float(erased.float().mean()), "wall": time.monotonic() - run.t_start}


def _save(run: _Run) -> None:
    tmp = run.ckpt_path.with_suffix(".tmp")
    torch.save({"model": run.model.state_dict(), "ema": run.ema.state_dict(), "opt": run.opt.state_dict(),
                "step": run.step, "wall": time.monotonic() - run.t_start, "config": run.cfg.to_dict(),
                "args": vars(run.args)}, tmp)
    tmp.replace(run.ckpt_path)


def train(args: argparse.Namespace) -> Path:
    """Train until ``args.steps`` (or a signal), logging every 100 steps, validating every 1000
    and checkpointing every ``args.ckpt_minutes``."""
    torch.set_num_threads(args.threads)
    run = _start(args)
    logf = open(Path(args.out) / "train.log", "a") if run.rank == 0 else None
    last_ckpt, stop = time.monotonic(), _stop_on_signal()
    while run.step < args.steps:
        rec = _train_step(run)
        last = run.step == args.steps
        if logf and (run.step % 100 == 0 or last):
            if run.step % 1000 == 0 or last:
                rec.update(validate(run.ema, run.val, (48, 64, 80)))
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
        if run.rank == 0 and (time.monotonic() - last_ckpt > args.ckpt_minutes * 60 or last or stop.is_set()):
            _save(run)
            last_ckpt = time.monotonic()
        if stop.is_set():
            log.info("stopped at step %d; checkpoint saved, continue with --resume", run.step)
            break
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run.ckpt_path


def _stop_on_signal():
    """SIGTERM/SIGINT finish the current step, save a checkpoint and stop (nothing lost)."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO)
    args = build_parser().parse_args(argv)
    if args.export:
        print(export(Path(args.out), Path(args.export), args.name))
        return 0
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
