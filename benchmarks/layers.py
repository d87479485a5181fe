"""Layer benchmark: forward+backward time of factorized vs dense Linear and Conv2d, and FD's overhead.

For each layer shape and rank ratio it reports the realized speedup (dense time / factorized time,
medians from ``torch.utils.benchmark``), the FLOP-ratio speedup (dense FLOPs / factorized FLOPs,
forward+backward, from ``torch.utils.flop_counter``) and their quotient (1 = the factorized layer
is as fast as its FLOPs promise). Convs are timed in both layouts (spatial: 1xk then kx1 conv;
channel: kxk conv then 1x1 conv), in NCHW and channels_last. Then one SGD step of a wide ResNet
factorized to ~10% of its parameters, with Frobenius decay vs plain weight decay (interleaved).

    python benchmarks/layers.py                   # full (~10 min on 2 CPU cores)
    python benchmarks/layers.py --device cuda     # on a GPU
    python benchmarks/layers.py --quick           # seconds (smoke test)
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import torch
from torch import nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from _common import machine, markdown_table, write_json
from automl_factor.factorization import FactorizedConv2d, FactorizedLinear, count_params, factorize, uniform_plan

RATIOS = (2, 4, 8, 16)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/out/layers")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default 1 on CPU: stable ratios on a shared machine; 0 = torch's default)")
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds per timing (default 0.4)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile trial")
    parser.add_argument("--fd-repeats", type=int, default=None, help="interleaved FD/WD step pairs (default 7)")
    parser.add_argument("--fd-model", default="resnet20", help="resnet20 (x width-multiplier) or resnet32_lt")
    parser.add_argument("--fd-width", type=float, default=4.0, help="width_multiplier of --fd-model")
    parser.add_argument("--fd-batch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=None,
                        help="batch of every layer timing (default 128 for linears, 64 for convs)")
    parser.add_argument("--fd-only", action="store_true", help="only the FD-overhead part (writes fd_overhead.json)")
    return parser.parse_args(argv)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def fwd_bwd(module: nn.Module, x: torch.Tensor):
    """One forward+backward (input gradient included, as for a layer inside a network)."""
    for p in module.parameters():
        p.grad = None
    x.grad = None
    module(x).sum().backward()


def time_fwd_bwd(module, x, threads, min_run_time, device) -> float:
    """Median seconds of one forward+backward."""
    fwd_bwd(module, x)  # warm up
    sync(device)
    timer = benchmark.Timer(stmt="fwd_bwd(module, x)", globals={"fwd_bwd": fwd_bwd, "module": module, "x": x},
                            num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def flops_fwd_bwd(module, x) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fwd_bwd(module, x)
    return counter.get_total_flops()


def make_input(shape, device, channels_last=False):
    x = torch.randn(shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(True)


def bench_linears(widths, batch, device, threads, min_run_time):
    rows = []
    for width in widths:
        dense = nn.Linear(width, width).to(device)
        x = make_input((batch, width), device)
        t_dense, f_dense = time_fwd_bwd(dense, x, threads, min_run_time, device), flops_fwd_bwd(dense, x)
        for ratio in RATIOS:
            rank = max(1, width // ratio)
            layer = FactorizedLinear.from_linear(dense, rank)
            t, f = time_fwd_bwd(layer, x, threads, min_run_time, device), flops_fwd_bwd(layer, x)
            rows.append(dict(layer="linear", shape=f"{width}x{width}", batch=batch, layout="-", rank_ratio=f"1/{ratio}",
                             rank=rank, params_ratio=layer.inference_params() / sum(p.numel() for p in dense.parameters()),
                             dense_ms=t_dense * 1e3, factorized_ms=t * 1e3, realized=t_dense / t, flop=f_dense / f,
                             memory="-"))
            rows[-1]["quotient"] = rows[-1]["realized"] / rows[-1]["flop"]
            print(_line(rows[-1]), flush=True)
    return rows


def bench_convs(shapes, batch, device, threads, min_run_time, formats):
    rows = []
    for size, channels in shapes:
        base = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device)
        dense_params = base.weight.numel()
        for memory in formats:
            channels_last = memory == "channels_last"
            dense = base.to(memory_format=torch.channels_last) if channels_last else base
            x = make_input((batch, channels, size, size), device, channels_last)
            t_dense, f_dense = time_fwd_bwd(dense, x, threads, min_run_time, device), flops_fwd_bwd(dense, x)
            for layout in ("spatial", "channel"):
                full = 3 * channels if layout == "spatial" else channels
                for ratio in RATIOS:
                    rank = max(1, full // ratio)
                    layer = FactorizedConv2d.from_conv(base, rank, layout=layout)
                    if channels_last:
                        layer = layer.to(memory_format=torch.channels_last)
                    t, f = time_fwd_bwd(layer, x, threads, min_run_time, device), flops_fwd_bwd(layer, x)
                    row = dict(layer="conv3x3", shape=f"{size}x{size}@{channels}", batch=batch, layout=layout,
                               rank_ratio=f"1/{ratio}", rank=rank, params_ratio=layer.inference_params() / dense_params,
                               dense_ms=t_dense * 1e3, factorized_ms=t * 1e3, realized=t_dense / t, flop=f_dense / f,
                               memory=memory)
                    row["quotient"] = row["realized"] / row["flop"]
                    rows.append(row)
                    print(_line(row), flush=True)
    return rows


def _line(row) -> str:
    return (f"{row['layer']:8s} {row['shape']:>12s} {row['layout']:8s} {row['memory']:13s} r={row['rank']:<5d} "
            f"({row['rank_ratio']:>4s}, params {row['params_ratio']:.3f}) dense {row['dense_ms']:8.2f} ms  "
            f"fact {row['factorized_ms']:8.2f} ms  realized {row['realized']:5.2f}x  FLOP {row['flop']:5.2f}x  "
            f"quotient {row['quotient']:.2f}")


def try_compile(size, channels, batch, device, threads, min_run_time, limit_s=120.0) -> dict:
    """torch.compile on one factorized conv (spatial, rank 1/4): compile time and speed vs eager."""
    base = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device)
    layer = FactorizedConv2d.from_conv(base, 3 * channels // 4, layout="spatial")
    x = make_input((batch, channels, size, size), device)
    eager = time_fwd_bwd(layer, x, threads, min_run_time, device)
    started = time.perf_counter()
    try:
        compiled = torch.compile(layer)
        fwd_bwd(compiled, x)
        fwd_bwd(compiled, x)
        sync(device)
    except Exception as error:  # noqa: BLE001 - a failed compile is a result, not a crash
        return {"status": f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}",
                "compile_s": time.perf_counter() - started}
    compile_s = time.perf_counter() - started
    if compile_s > limit_s:
        return {"status": f"skipped timing: compile took {compile_s:.0f} s", "compile_s": compile_s}
    t = time_fwd_bwd(compiled, x, threads, min_run_time, device)
    return {"status": "ok", "shape": f"{size}x{size}@{channels}", "batch": batch, "compile_s": compile_s,
            "eager_ms": eager * 1e3, "compiled_ms": t * 1e3, "speedup": eager / t}


def fd_overhead(model_name, width, batch, device, repeats, quick) -> dict:
    """One SGD step (the library's train_one_epoch on one batch) with FD vs plain weight decay."""
    from automl_factor import models
    from automl_factor.factorization import add_frobenius_grad_, frobenius_penalty
    from automl_factor.train import TrainConfig, make_optimizer, make_schedule, train_one_epoch
    from automl_factor.train.data import DataBundle, Dataset

    torch.manual_seed(0)
    kwargs = {} if model_name == "resnet32_lt" and width == 1 else {"width_multiplier": width}
    dense = models.create(model_name, num_classes=10, **kwargs)
    size = 8 if quick else 32
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 10, (batch,))
    data = DataBundle(train=Dataset(images, labels), val=None, test=Dataset(images, labels), num_classes=10,
                      mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=size // 8, flip=True)
    setups = {}
    for regularizer in ("fd", "wd"):
        plan = uniform_plan(dense, params_ratio=0.1, regularizer=regularizer)
        model = factorize(dense, plan).to(device)
        config = TrainConfig(epochs=1, batch_size=batch, lr=0.01)
        optimizer = make_optimizer(model, config, plan)
        schedule = make_schedule(optimizer, config, 1)
        setups[regularizer] = (model, optimizer, schedule, config, plan)
    params_ratio = count_params(setups["fd"][0]) / count_params(dense)
    generator = torch.Generator().manual_seed(0)

    def step(regularizer):
        model, optimizer, schedule, config, plan = setups[regularizer]
        sync(device)
        start = time.perf_counter()
        train_one_epoch(model, data, optimizer, schedule, config, generator=generator, plan=plan)
        sync(device)
        return time.perf_counter() - start

    for regularizer in ("fd", "wd"):  # warm up both
        step(regularizer)
    times = {"fd": [], "wd": []}
    for index in range(repeats):  # interleaved, alternating which goes first
        order = ("fd", "wd") if index % 2 == 0 else ("wd", "fd")
        for regularizer in order:
            times[regularizer].append(step(regularizer))
    fd_model = setups["fd"][0]

    def penalty():  # the old way: FD as an autograd penalty added to the loss
        for p in fd_model.parameters():
            p.grad = None
        frobenius_penalty(fd_model).backward()

    def closed_form():  # what training does now: closed-form gradients, batched over equal shapes
        add_frobenius_grad_(fd_model, 5e-4)
        sync(device)

    penalty()
    timer_threads = torch.get_num_threads()
    penalty_s = benchmark.Timer(stmt="penalty()", globals={"penalty": penalty},
                                num_threads=timer_threads).blocked_autorange(min_run_time=0.3).median
    closed_s = benchmark.Timer(stmt="closed_form()", globals={"closed_form": closed_form},
                               num_threads=timer_threads).blocked_autorange(min_run_time=0.3).median
    fd, wd = statistics.median(times["fd"]), statistics.median(times["wd"])
    return {"model": f"{model_name} width x{width:g}", "params_ratio": params_ratio, "batch": batch,
            "repeats": repeats, "fd_step_s": fd, "wd_step_s": wd, "overhead_pct": 100 * (fd / wd - 1),
            "fd_steps_s": times["fd"], "wd_steps_s": times["wd"], "penalty_fwd_bwd_ms": penalty_s * 1e3,
            "penalty_share_pct": 100 * penalty_s / wd, "closed_form_ms": closed_s * 1e3,
            "closed_form_share_pct": 100 * closed_s / wd,
            "paired_overhead_pct_median": 100 * statistics.median(f / w - 1 for f, w in zip(times["fd"], times["wd"]))}


def plot(rows, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    groups = {}
    for row in rows:
        key = row["layer"] if row["layer"] == "linear" else f"conv {row['layout']} ({row['memory']})"
        groups.setdefault(key, []).append(row)
    for (key, members), marker in zip(sorted(groups.items()), "osD^v<>"):
        axes[0].scatter([r["flop"] for r in members], [r["realized"] for r in members], label=key, marker=marker, alpha=0.7)
        axes[1].scatter([r["params_ratio"] for r in members], [r["quotient"] for r in members], label=key,
                        marker=marker, alpha=0.7)
    top = max(max(r["flop"] for r in rows), 2)
    axes[0].plot([0.5, top], [0.5, top], "k--", lw=1, label="realized = FLOP ratio")
    axes[0].axhline(1, color="gray", lw=0.8)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_xlabel("FLOP-ratio speedup (dense / factorized, fwd+bwd)")
    axes[0].set_ylabel("realized speedup (median time)")
    axes[0].set_title("factorized vs dense layers")
    axes[1].set_xlabel("params ratio (factorized / dense)")
    axes[1].set_ylabel("realized / FLOP speedup")
    axes[1].set_title("how much of the FLOP saving is realized")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_rows(rows):
    """Median quotient and best realized speedup per layer kind / layout / memory format."""
    groups = {}
    for row in rows:
        groups.setdefault((row["layer"], row["layout"], row["memory"]), []).append(row)
    out = []
    for (layer, layout, memory), members in sorted(groups.items()):
        faster = sum(r["realized"] > 1 for r in members)
        out.append([layer, layout, memory, len(members), statistics.median(r["quotient"] for r in members),
                    statistics.median(r["realized"] for r in members), max(r["realized"] for r in members),
                    f"{faster}/{len(members)}"])
    return out


def wide_layers_line(rows) -> str:
    """Issue 10's per-layer target: layers >= 256 wide reaching >= 60% of their FLOP speedup."""
    def width(row):
        return int(row["shape"].split("@")[-1]) if "@" in row["shape"] else int(row["shape"].split("x")[0])

    wide = [r for r in rows if width(r) >= 256 and r["memory"] in ("-", "contiguous")]
    hits = sum(r["quotient"] >= 0.6 for r in wide)
    return (f"layers >= 256 wide (batch {wide[0]['batch'] if wide else '-'}): {hits}/{len(wide)} reach >= 60% of "
            f"their FLOP speedup; {sum(r['realized'] > 1 for r in wide)}/{len(wide)} faster than dense")


def report_fd_overhead(args, device, out: Path, threads: int) -> dict:
    """Run and print the FD-overhead part; with ``--fd-only`` also write it to fd_overhead.json."""
    quick = args.quick
    print("FD overhead ...", flush=True)
    fd = fd_overhead("resnet20" if quick else args.fd_model, 1.0 if quick else args.fd_width,
                     8 if quick else args.fd_batch, device, args.fd_repeats or (2 if quick else 7), quick)
    print(f"FD overhead: {fd['overhead_pct']:+.1f}% (paired median {fd['paired_overhead_pct_median']:+.1f}%; FD step "
          f"{fd['fd_step_s']*1e3:.0f} ms vs WD {fd['wd_step_s']*1e3:.0f} ms); closed-form FD alone "
          f"{fd['closed_form_ms']:.2f} ms = {fd['closed_form_share_pct']:.2f}% of a step (the old penalty fwd+bwd: "
          f"{fd['penalty_fwd_bwd_ms']:.1f} ms = {fd['penalty_share_pct']:.1f}%)", flush=True)
    if args.fd_only:
        write_json(out / "fd_overhead.json", {"fd_overhead": fd, "machine": machine(), "device": str(device),
                                              "threads": threads})
    return fd


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    threads_arg = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads_arg:
        torch.set_num_threads(threads_arg)
    global RATIOS
    if args.quick:
        RATIOS = (2, 4)
    threads = torch.get_num_threads()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    min_run_time = args.min_run_time or (0.01 if quick else 0.4)
    widths = (64, 128) if quick else (64, 128, 256, 512, 1024)
    conv_shapes = ((8, 16),) if quick else ((32, 64), (16, 128), (8, 256), (8, 512))
    conv_batch = args.batch or (4 if quick else 64)
    linear_batch = args.batch or (8 if quick else 128)
    started = time.perf_counter()
    print(f"machine: {machine()}; device {device}", flush=True)

    if args.fd_only:
        report_fd_overhead(args, device, out, threads)
        return
    rows = bench_linears(widths, linear_batch, device, threads, min_run_time)
    formats = ("contiguous", "channels_last")
    rows += bench_convs(conv_shapes, conv_batch, device, threads, min_run_time, formats)

    # channels_last: same layer, same rank; does it make the factorized (or dense) conv faster?
    cl_rows = []
    by_key = {(r["shape"], r["layout"], r["rank_ratio"], r["memory"]): r for r in rows if r["layer"] != "linear"}
    for (shape, layout, ratio, memory), row in by_key.items():
        if memory != "contiguous":
            continue
        other = by_key[(shape, layout, ratio, "channels_last")]
        cl_rows.append([shape, layout, ratio, row["dense_ms"] / other["dense_ms"],
                        row["factorized_ms"] / other["factorized_ms"]])

    compile_result = {"status": "skipped (--quick or --no-compile)"}
    if not quick and not args.no_compile:
        print("torch.compile trial ...", flush=True)
        compile_result = try_compile(16, 128, conv_batch, device, threads, min_run_time)
        print(f"torch.compile: {compile_result}", flush=True)

    fd = report_fd_overhead(args, device, out, threads)

    header = ["layer", "shape", "batch", "layout", "memory", "rank ratio", "rank", "params ratio", "dense ms",
              "factorized ms", "realized speedup", "FLOP speedup", "realized/FLOP"]
    table_rows = [[r["layer"], r["shape"], r["batch"], r["layout"], r["memory"], r["rank_ratio"], r["rank"],
                   r["params_ratio"], r["dense_ms"], r["factorized_ms"], r["realized"], r["flop"], r["quotient"]]
                  for r in rows]
    text = ["# Layer benchmark (forward+backward)\n", f"machine: {machine()}, device `{device}`, "
            f"{threads} threads, median of torch.utils.benchmark blocked_autorange (min_run_time {min_run_time} s); "
            f"FLOPs from torch.utils.flop_counter (forward+backward, input gradient included). "
            f"Total run {time.perf_counter() - started:.0f} s.\n",
            "## Summary (median over widths and rank ratios)\n",
            markdown_table(["layer", "layout", "memory", "n", "median realized/FLOP", "median realized speedup",
                            "best realized speedup", "faster than dense"], summary_rows(rows)), "",
            wide_layers_line(rows) + "\n",
            "## channels_last vs contiguous (time contiguous / time channels_last; > 1: channels_last faster)\n",
            markdown_table(["shape", "layout", "rank ratio", "dense", "factorized"], cl_rows), "",
            "## torch.compile (one factorized conv, spatial, rank 1/4)\n", f"`{compile_result}`\n",
            "## FD overhead: one SGD step, Frobenius decay vs plain weight decay\n",
            markdown_table(["model", "params ratio", "batch", "repeats (interleaved)", "FD step ms", "WD step ms",
                            "overhead %", "paired median %", "closed-form FD ms", "closed-form / step %",
                            "old penalty fwd+bwd ms", "old penalty / step %"],
                           [[fd["model"], fd["params_ratio"], fd["batch"], fd["repeats"], fd["fd_step_s"] * 1e3,
                             fd["wd_step_s"] * 1e3, fd["overhead_pct"], fd["paired_overhead_pct_median"],
                             fd["closed_form_ms"], fd["closed_form_share_pct"],
                             fd["penalty_fwd_bwd_ms"], fd["penalty_share_pct"]]]), "",
            "## All layers\n", markdown_table(header, table_rows), ""]
    (out / "table.md").write_text("\n".join(text))
    write_json(out / "results.json", {"rows": rows, "compile": compile_result, "fd_overhead": fd,
                                      "machine": machine(), "device": str(device), "threads": threads})
    plot(rows, out / "speedup.png")
    print(wide_layers_line(rows), flush=True)
    print(f"wrote {out / 'table.md'}, {out / 'speedup.png'} in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
