"""Training-step throughput of the engine's pieces, with the data already on the device.

    python benchmarks/bench_step.py --device cuda                          # lite0, 224 px, batch 256, bf16
    python benchmarks/bench_step.py --device cpu --image-size 64 --batch-size 32 --steps 5 --no-compile

One step is what `core.train.loop.Trainer._train_epoch` does per batch: `augment_batch` on a uint8 batch that
already sits on the device (the engine's decode-once cache), channels_last, autocast (bf16 where the device
has it), the TransferModel forward, the default loss (cross-entropy with label smoothing), backward, AdamW
over the discriminative parameter groups, the per-step schedule; the loss is read every 10 steps on a GPU
(every step on the CPU), as the engine does. Measured for a full fine-tune (freeze_ratio 0) and the
default 75% frozen, eager and under `torch.compile` (whose warm-up is reported separately).

Prints one JSON line per configuration and a summary line; --out FILE.json writes them all.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.train.augment import augment_batch  # noqa: E402
from core.model.backbones import load_backbone  # noqa: E402
from core.config import TrainConfig  # noqa: E402
from core.train.losses import make_loss  # noqa: E402
from core.model.transfer import TransferModel  # noqa: E402
from core.train.schedules import make_scheduler  # noqa: E402
from core.runtime import resolve_amp, resolve_device  # noqa: E402

NUM_CLASSES = 10


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, freeze_ratio: float, compiled: bool, augment: bool = True,
            fused: bool = False) -> dict:
    cfg = TrainConfig(model=args.model, freeze_ratio=freeze_ratio, image_size=args.image_size,
                      batch_size=args.batch_size, device=args.device)
    device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)
    torch.manual_seed(0)
    backbone = load_backbone(cfg.model)
    pre = backbone.preprocess.with_input_size(cfg.image_size)
    model = TransferModel(backbone, NUM_CLASSES, cfg.adapter_layers, cfg.adapter_dim, cfg.dropout, cfg.bn_stats)
    frozen = model.freeze_ratio(freeze_ratio)
    model.to(device).to(memory_format=torch.channels_last)
    model.train()
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.param_groups(cfg.lr, cfg.lr_decay), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  **({"fused": True} if fused else {}))
    total_steps = args.warmup + args.steps
    per_step, _ = make_scheduler(optimizer, cfg.schedule, total_steps, total_steps, cfg.warmup_epochs,
                                 cfg.step_epochs, cfg.plateau_patience)
    loss_fn = make_loss(cfg.loss, [1] * NUM_CLASSES, cfg.label_smoothing, cfg.focal_gamma).to(device)
    side = pre.cache_size
    images = torch.randint(0, 256, (cfg.batch_size, 3, side, side), dtype=torch.uint8, device=device)
    labels = torch.randint(0, NUM_CLASSES, (cfg.batch_size,), device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    report_every = 1 if device.type == "cpu" else 10

    def step(b: int) -> None:
        x = augment_batch(images, cfg.augment, pre, gen) if augment else pre.eval_input(images)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = forward(x)
        loss = loss_fn(logits.float(), labels)
        if b % report_every == 0:
            float(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if per_step is not None:
            per_step.step()

    sync(device)
    t0 = time.perf_counter()
    step(0)  # the first step: compiles when compiled, allocates otherwise
    sync(device)
    first_step = time.perf_counter() - t0
    for b in range(1, args.warmup):
        step(b)
    sync(device)
    t0 = time.perf_counter()
    for b in range(args.steps):
        step(b)
    sync(device)
    seconds = time.perf_counter() - t0
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for b in range(5):
                step(b)
            sync(device)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=25), flush=True)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return {"model": cfg.model, "image_size": pre.input_size, "batch_size": cfg.batch_size,
            "freeze_ratio": freeze_ratio, "frozen_groups": frozen, "layer_groups": len(model.groups),
            "compiled": compiled, "augment": augment, "fused_adamw": fused, "amp": str(amp).replace("torch.", "") if amp else "off",
            "first_step_seconds": round(first_step, 2), "timed_steps": args.steps,
            "images_per_s": round(args.steps * cfg.batch_size / seconds, 1),
            "ms_per_step": round(1000 * seconds / args.steps, 2),
            "peak_memory_mib": round(peak, 1) if peak is not None else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps after the first")
    parser.add_argument("--steps", type=int, default=40, help="timed steps")
    parser.add_argument("--freeze", default="0,0.75", help="freeze ratios to measure, comma-separated")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--variants", action="store_true",
                        help="also eager without augmentation, and with fused AdamW (what the step's time goes to)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators per config")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    rows = []
    for compiled in ([False] if args.no_compile else [False, True]):
        for ratio in (float(r) for r in args.freeze.split(",")):
            variants = [(True, False)] + ([(False, False), (True, True)] if args.variants and not compiled else [])
            for augment, fused in variants:
                row = measure(args, ratio, compiled, augment, fused)
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "command": "python " + " ".join(sys.argv), "results": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "results"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
