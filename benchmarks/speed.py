"""Training speed of dense vs factorized models, with the fast path (torch.compile) on and off.

Issue 10's questions, one part each (all on one device, the model `resnet32_lt` unless told):

- ``throughput``: training img/s of dense, low-rank (default init, weight decay) and SI+FD at ~10% of
  the parameters, at each batch size, eager and compiled. The library's own ``train_one_epoch`` on
  device-resident data (synthetic uint8 images: decoding is not what is measured); the first epoch
  (compilation) is timed apart and reported as compile seconds.
- ``latency``: the deployed (collapsed) SI+FD model against dense at batch 1 and a serving batch,
  timed alternately (``paired_latency``).
- ``share``: 1, 2, 4 processes training SI+FD at once on the device (what fractional GPUs per trial
  give a search), their summed img/s against one alone.

    python benchmarks/speed.py --device cuda                # the GPU table (a few minutes)
    python benchmarks/speed.py                              # on this CPU (resnet20, small batches)
    python benchmarks/speed.py --quick                      # seconds (smoke test)

Writes OUT/speed.json and OUT/speed.md and prints the table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import torch

from _common import machine, markdown_table, write_json
from automl_factor import models
from automl_factor.factorization import count_params, factorize, uniform_plan
from automl_factor.train import TrainConfig, make_optimizer, make_schedule, steps_per_epoch, train_one_epoch
from automl_factor.train.data import DataBundle, Dataset
from automl_factor.train.loop import compile_seconds
from automl_factor.train.measure import paired_latency

# (name, factorized?, init, regularizer)
VARIANTS = [("dense", False, "spectral", "wd"), ("low-rank", True, "default", "wd"), ("SI+FD", True, "spectral", "fd")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/out/speed")
    parser.add_argument("--parts", default="throughput,latency,share", help="comma list of throughput, latency, share")
    parser.add_argument("--model", default=None, help="default resnet32_lt on CUDA, resnet20 x4 on CPU")
    parser.add_argument("--width", type=float, default=None, help="width_multiplier (default 1; CPU: 4)")
    parser.add_argument("--batch-sizes", default=None, help="comma list (default 128,512 on CUDA; 64 on CPU)")
    parser.add_argument("--images", type=int, default=None, help="images per timed epoch (default 16384; CPU 512)")
    parser.add_argument("--params-ratio", type=float, default=0.1)
    parser.add_argument("--serving-batch", type=int, default=256)
    parser.add_argument("--share-procs", default="1,2,4")
    parser.add_argument("--share-seconds", type=float, default=None, help="training seconds per process (default 20)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one process of the share part
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.model = args.model or ("resnet20" if args.quick or not cuda else "resnet32_lt")
    args.width = args.width or (0.5 if args.quick else 1.0 if cuda else 4.0)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("16" if args.quick else "128,512" if cuda else "64")).split(",")]
    args.images = args.images or (64 if args.quick else 16384 if cuda else 512)
    args.share_seconds = args.share_seconds or (2.0 if args.quick else 20.0)
    args.image_size = 8 if args.quick else 32
    args.parts = set(args.parts.split(","))
    return args


def build(args, variant: str) -> tuple[torch.nn.Module, dict | None]:
    """(model, plan): the dense model (no plan), or its ~``params_ratio`` factorization with the
    variant's init and regularizer."""
    name, factorized, init, regularizer = next(v for v in VARIANTS if v[0] == variant)
    torch.manual_seed(0)
    kwargs = {} if args.model == "resnet32_lt" and args.width == 1 else {"width_multiplier": args.width}
    dense = models.create(args.model, num_classes=10, **kwargs)
    if not factorized:
        return dense, None
    plan = uniform_plan(dense, params_ratio=args.params_ratio, init=init, regularizer=regularizer)
    return factorize(dense, plan), plan


def synthetic_data(args, device) -> DataBundle:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           generator=generator)
    labels = torch.randint(0, 10, (args.images,), generator=generator)
    split = Dataset(images, labels)
    return DataBundle(train=split, val=None, test=split, num_classes=10, mean=(0.49, 0.48, 0.45),
                      std=(0.25, 0.24, 0.26), crop_padding=4 if args.image_size >= 32 else 1, flip=True).to(device)


def train_speed(args, variant: str, batch: int, compiled: bool, device, *, seconds: float | None = None) -> dict:
    """img/s of ``train_one_epoch`` after a first (warm-up/compile) epoch; with ``seconds``, epochs
    are repeated until that much training time has passed (the share part)."""
    model, plan = build(args, variant)
    model = model.to(device)
    config = TrainConfig(epochs=1000, batch_size=batch, lr=0.01, compile=compiled)
    data = synthetic_data(args, device)
    optimizer = make_optimizer(model, config, plan)
    schedule = make_schedule(optimizer, config, steps_per_epoch(len(data.train), config, device))
    generator = torch.Generator(device=device).manual_seed(0)
    start = time.perf_counter()
    train_one_epoch(model, data, optimizer, schedule, config, generator=generator, plan=plan)
    warmup_s = time.perf_counter() - start
    images, elapsed, epochs = 0, 0.0, 0
    while epochs < 2 or (seconds is not None and elapsed < seconds):
        metrics = train_one_epoch(model, data, optimizer, schedule, config, generator=generator, plan=plan)
        images, elapsed, epochs = images + metrics["images"], elapsed + metrics["seconds"], epochs + 1
    return {"variant": variant, "batch": batch, "compiled": compiled, "img_per_s": images / elapsed,
            "warmup_s": warmup_s, "compile_s": compile_seconds(model), "epochs_timed": epochs,
            "params_ratio": count_params(model) / count_params(build(args, "dense")[0])}


def throughput(args, device) -> list[dict]:
    rows = []
    for batch in args.batch_sizes:
        for compiled in (False, True):
            for variant, *_ in VARIANTS:
                row = train_speed(args, variant, batch, compiled, device)
                rows.append(row)
                print(f"  {variant:9s} batch {batch:4d} {'compiled' if compiled else 'eager   '}: "
                      f"{row['img_per_s']:9.0f} img/s (first epoch {row['warmup_s']:.1f} s, compile {row['compile_s']:.1f} s)",
                      flush=True)
    return rows


def latency(args, device) -> list[dict]:
    dense, candidate = build(args, "dense")[0].to(device), build(args, "SI+FD")[0].to(device)
    rows = []
    for batch in (1, args.serving_batch):
        measured = paired_latency(candidate, dense, (batch, 3, args.image_size, args.image_size),
                                  rounds=3 if args.quick else 7, device=device)
        rows.append({"batch": batch, "ratio": measured.ratio, "spread": measured.spread, "ms": measured.ms,
                     "dense_ms": measured.dense_ms})
        print(f"  latency batch {batch}: SI+FD {measured.ms:.3f} ms vs dense {measured.dense_ms:.3f} ms = "
              f"{measured.ratio:.3f} (±{measured.spread:.1%})", flush=True)
    return rows


def share(args) -> list[dict]:
    """Summed img/s of k processes each training SI+FD at the first batch size, started together."""
    rows = []
    for procs in [int(k) for k in args.share_procs.split(",")]:
        command = [sys.executable, __file__, "--worker", "--device", args.device, "--model", args.model,
                   "--width", str(args.width), "--batch-sizes", str(args.batch_sizes[0]), "--images", str(args.images),
                   "--share-seconds", str(args.share_seconds)] + (["--quick"] if args.quick else [])
        workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
        results = [json.loads(worker.communicate()[0].strip().splitlines()[-1]) for worker in workers]
        total = sum(result["img_per_s"] for result in results)
        rows.append({"procs": procs, "total_img_per_s": total, "per_proc": [r["img_per_s"] for r in results]})
        print(f"  {procs} processes: {total:9.0f} img/s in total", flush=True)
    base = rows[0]["total_img_per_s"]
    for row in rows:
        row["vs_one"] = row["total_img_per_s"] / base
    return rows


def report(args, device, results: dict, seconds: float) -> str:
    lines = [f"# Training speed ({machine()}, device {device}, model {args.model} x{args.width:g}, "
             f"~{args.params_ratio:g} params; {seconds:.0f} s)\n"]
    if "throughput" in results:
        by = {(r["variant"], r["batch"], r["compiled"]): r for r in results["throughput"]}
        table = []
        for batch in args.batch_sizes:
            for compiled in (False, True):
                dense = by[("dense", batch, compiled)]["img_per_s"]
                for variant, *_ in VARIANTS:
                    row = by[(variant, batch, compiled)]
                    table.append([variant, batch, "compiled" if compiled else "eager", row["img_per_s"],
                                  row["img_per_s"] / dense, row["compile_s"], row["params_ratio"]])
        lines += ["## Training throughput (img/s, synthetic 32x32 images on the device)\n",
                  markdown_table(["model", "batch", "step", "img/s", "vs dense (same step)", "compile s",
                                  "params ratio"], table), ""]
    if "latency" in results:
        lines += ["## Deployed latency, SI+FD vs dense (paired, median of rounds)\n",
                  markdown_table(["batch", "SI+FD ms", "dense ms", "ratio", "spread ±"],
                                 [[r["batch"], r["ms"], r["dense_ms"], r["ratio"], r["spread"]]
                                  for r in results["latency"]]), ""]
    if "share" in results:
        lines += [f"## Trials sharing the device (SI+FD, batch {args.batch_sizes[0]}, default step)\n",
                  markdown_table(["processes", "total img/s", "vs one"],
                                 [[r["procs"], r["total_img_per_s"], r["vs_one"]] for r in results["share"]]), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # stable figures on a shared 2-core machine
    if args.worker:
        result = train_speed(args, "SI+FD", args.batch_sizes[0], device.type == "cuda", device,
                             seconds=args.share_seconds)
        print(json.dumps(result))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"machine: {machine()}; device {device}; {args.model} x{args.width:g}", flush=True)
    results = {}
    if "throughput" in args.parts:
        results["throughput"] = throughput(args, device)
    if "latency" in args.parts:
        results["latency"] = latency(args, device)
    if "share" in args.parts:
        results["share"] = share(args)
    text = report(args, device, results, time.perf_counter() - started)
    (out / "speed.md").write_text(text)
    write_json(out / "speed.json", {"machine": machine(), "device": str(device), "args": vars(args), **results})
    print(text, flush=True)


if __name__ == "__main__":
    main()
