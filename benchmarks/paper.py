"""The paper's claims on a CIFAR-10 subset (Khodak et al., ICLR 2021).

(a) Figure 2: per epoch, the mean over factorized layers of ‖UVᵀ‖_* / ½(‖U‖²+‖V‖²) for
    {weight decay, Frobenius decay} x {default (Kaiming-uniform) init, spectral init}. Weight decay
    balances the factors at a rate set by its exposure λ·Σ lr (summed over steps), which a short CPU run
    cannot reach at the usual λ; so Figure 2 has its own runs (smaller batch, larger λ: exposure ≈ 1)
    and the report gives each run's exposure.
(b) Table 1 at ~10% of the parameters: dense, low-rank, +SI, +FD, +SI+FD, and global magnitude
    pruning to the same number of nonzero weights; several seeds, mean ± std.
(c) Overcomplete (rank scale 3, SI, FD, collapsed to dense after training) vs dense training of
    the same architecture.

    python benchmarks/paper.py                      # ~1 h on 2 CPU cores (settings printed):
                                                    # resnet20 x2 at 10%, 1024 images, 40 epochs, batch 64
    python benchmarks/paper.py --width 4 ...        # the wide model (about 3x slower per image here)
    python benchmarks/paper.py --device cuda --train-subset 50000 --epochs 200 --test-subset 10000
    python benchmarks/paper.py --quick --data digits  # smoke test
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import torch
from torch import nn

from _common import DEFAULT_DATA, data_spec, machine, markdown_table, write_json
from automl_factor.factorization import collapse, count_params, factorize, uniform_plan
from automl_factor.factorization.frobenius import nuclear_norm_and_bound
from automl_factor.factorization.layers import FactorizedLayer
from automl_factor.train import (TrainConfig, build_model, evaluate, load, make_optimizer, make_schedule,
                                 steps_per_epoch, train_one_epoch)
from automl_factor.train.data import Dataset

# Table 1 rows: (name, kind, init, regularizer)
LOWRANK_ROWS = [("low-rank", "default", "wd"), ("low-rank + SI", "spectral", "wd"),
                ("low-rank + FD", "default", "fd"), ("low-rank + SI + FD", "spectral", "fd")]
PAPER_CIFAR10 = {"dense": 94.49, "low-rank": 93.59, "low-rank + SI + FD": 94.34, "pruning": 94.21}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=DEFAULT_DATA, help="CIFAR-10 parquet folder, or 'digits' (smoke test)")
    parser.add_argument("--out", default="benchmarks/out/paper")
    parser.add_argument("--seeds", type=int, default=None, help="default 3; quick 1")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 40; quick 2)")
    parser.add_argument("--train-subset", type=int, default=None, help="training images (default 1024; quick 200)")
    parser.add_argument("--test-subset", type=int, default=None, help="test images scored (default 5000; quick all)")
    parser.add_argument("--model", default="resnet20", help="resnet20 (with --width) or resnet32_lt")
    parser.add_argument("--width", type=float, default=None, help="width_multiplier (default 2; quick 1)")
    parser.add_argument("--params-ratio", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="also the FD coefficient")
    parser.add_argument("--fig2-epochs", type=int, default=None, help="epochs of the Figure 2 runs (default 30)")
    parser.add_argument("--fig2-batch-size", type=int, default=16)
    parser.add_argument("--fig2-weight-decay", type=float, default=1e-2, help="λ of the Figure 2 runs (WD and FD)")
    parser.add_argument("--prune-finetune-epochs", type=int, default=None, help="default max(1, epochs // 4)")
    parser.add_argument("--oc-model", default="resnet20", help="architecture of part (c)")
    parser.add_argument("--oc-width", type=float, default=1.0, help="width_multiplier of part (c)")
    parser.add_argument("--oc-seeds", type=int, default=None, help="seeds of part (c) (default 1)")
    parser.add_argument("--parts", default="fig2,table1,overcomplete",
                        help="comma list of fig2, table1, overcomplete, lowrank (Table 1's low-rank rows only)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seeds = args.seeds or (1 if quick else 3)
    args.epochs = args.epochs or (2 if quick else 40)
    args.train_subset = args.train_subset or (200 if quick else 1024)
    args.fig2_epochs = args.fig2_epochs or (2 if quick else 30)
    args.width = args.width or (1.0 if quick else 2.0)
    if args.test_subset is None and not quick:
        args.test_subset = 5000
    args.prune_finetune_epochs = args.prune_finetune_epochs or max(1, args.epochs // 4)
    args.oc_seeds = args.oc_seeds or 1
    args.parts = set(args.parts.split(","))
    return args


def model_kwargs(name: str, width: float) -> dict:
    return {"width_multiplier": width}


def factor_layers(model: nn.Module) -> list[FactorizedLayer]:
    return [m for m in model.modules() if isinstance(m, FactorizedLayer)]


def nuclear_ratio(model: nn.Module) -> float:
    """Mean over factorized layers of ‖UVᵀ‖_* / ½(‖U‖²+‖V‖²)."""
    ratios = []
    for layer in factor_layers(model):
        nuclear, bound = nuclear_norm_and_bound(layer.U, layer.V)
        ratios.append(nuclear / bound)
    return statistics.mean(ratios)


def decay_exposure(config: TrainConfig, steps_per_epoch: int) -> float:
    """λ·Σ_t lr_t over the run: how far weight decay can pull ‖U‖² and ‖V‖² together
    (their gap shrinks by about exp(-2·exposure))."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    schedule = make_schedule(optimizer, config, steps_per_epoch)
    total = 0.0
    for _ in range(config.epochs * steps_per_epoch):
        total += schedule.get_last_lr()[0]
        optimizer.step()
        schedule.step()
    return config.weight_decay * total


def train(model, data, args, *, plan=None, seed, epochs=None, lr=None, weight_decay=None, batch_size=None,
          track_ratio=False):
    """Train with the library's loop (each factorized layer decayed as ``plan`` says; a dense model
    gets plain weight decay); returns (test accuracy, per-epoch log, seconds, decay exposure)."""
    config = TrainConfig(epochs=epochs or args.epochs, batch_size=batch_size or args.batch_size,
                         lr=lr or args.lr, weight_decay=weight_decay or args.weight_decay)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    data = data.to(device)
    optimizer = make_optimizer(model, config, plan)
    schedule = make_schedule(optimizer, config, steps_per_epoch(len(data.train), config, device))
    generator = torch.Generator(device=device).manual_seed(seed)
    log = [{"epoch": 0, "nuclear_ratio": nuclear_ratio(model)}] if track_ratio else []
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        metrics = train_one_epoch(model, data, optimizer, schedule, config, generator=generator, epoch=epoch,
                                  plan=plan)
        entry = {"epoch": epoch, "loss": metrics["loss"], "train_accuracy": metrics["train_accuracy"],
                 "seconds": metrics["seconds"]}
        if track_ratio:
            entry["nuclear_ratio"] = nuclear_ratio(model)
        log.append(entry)
    seconds = time.perf_counter() - start
    exposure = decay_exposure(config, steps_per_epoch(len(data.train), config, device))
    return evaluate(model, data.test, data, config=config), log, seconds, exposure


def dense_model(args, data, seed, name=None, width=None):
    torch.manual_seed(seed)
    name, width = name or args.model, width or args.width
    return build_model(name, data, **model_kwargs(name, width)).to(args.device)


def prunable(model: nn.Module, names: list[str]):
    return [(model.get_submodule(name), "weight") for name in names]


def magnitude_prune(model: nn.Module, names: list[str], keep_total: int) -> int:
    """Global L1 magnitude pruning of the named layers' weights so the model has ``keep_total``
    nonzero parameters in all; returns the number of weights pruned."""
    from torch.nn.utils import prune

    total = count_params(model)
    amount = total - keep_total
    prune.global_unstructured(prunable(model, names), pruning_method=prune.L1Unstructured, amount=int(amount))
    return int(amount)


def nonzero_params(model: nn.Module) -> int:
    """Parameters that are nonzero after pruning (masks applied), all other parameters counted."""
    total = 0
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if pname.endswith("_orig"):
                mask = getattr(module, pname[: -len("_orig")] + "_mask")
                total += int(mask.sum())
            else:
                total += param.numel()
    return total


class Runs:
    """Results keyed by run name, appended to runs.jsonl as they finish (a rerun skips finished runs)."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.results = path, {}
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("settings") == settings:
                    self.results[record["key"]] = record
        self.settings = settings

    def done(self, key):
        return key in self.results

    def add(self, key, **record):
        record.update(key=key, settings=self.settings)
        self.results[key] = record
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        extra = f", ratio {record['log'][-1]['nuclear_ratio']:.3f}" if record.get("log") and \
            "nuclear_ratio" in record["log"][-1] else ""
        print(f"  {key}: test accuracy {100 * record['accuracy']:.2f}%  params {record['params']:,} "
              f"({record['params_ratio']:.3f})  {record['seconds']:.0f} s{extra}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    data = load(data_spec(args.data), train_subset=args.train_subset)
    if args.test_subset and args.test_subset < len(data.test):
        data = dataclasses.replace(data, test=Dataset(data.test.images[: args.test_subset],
                                                      data.test.labels[: args.test_subset]))
    settings = {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()
                if k not in ("out", "parts", "threads", "seeds", "oc_seeds")}
    settings["data"] = data_spec(args.data)
    print(f"machine: {machine()}", flush=True)
    print("settings: " + json.dumps(settings), flush=True)
    runs = Runs(out / "runs.jsonl", settings)

    reference = dense_model(args, data, 0)
    dense_params = count_params(reference)
    names = uniform_plan(reference, params_ratio=args.params_ratio)  # the layers and ranks of every low-rank row
    ranks = {name: layer.rank for name, layer in names.items()}
    print(f"{args.model} x{args.width:g}: {dense_params:,} params; ranks at {args.params_ratio:g}: "
          f"{sorted(set(ranks.values()))}", flush=True)

    def lowrank_run(key, row, init, regularizer, seed, **overrides):
        if runs.done(key):
            return
        dense = dense_model(args, data, seed)
        plan = uniform_plan(dense, params_ratio=args.params_ratio, init=init, regularizer=regularizer)
        model = factorize(dense, plan, generator=torch.Generator().manual_seed(seed)).to(args.device)
        accuracy, log, seconds, exposure = train(model, data, args, plan=plan, seed=seed, track_ratio=True,
                                                 **overrides)
        params = count_params(model)
        runs.add(key, row=row, seed=seed, accuracy=accuracy, params=params, params_ratio=params / dense_params,
                 seconds=seconds, exposure=exposure, log=log)

    if "fig2" in args.parts:
        for row, init, regularizer in LOWRANK_ROWS:
            lowrank_run(f"fig2 {row}", f"fig2 {row}", init, regularizer, 0, epochs=args.fig2_epochs,
                        batch_size=args.fig2_batch_size, weight_decay=args.fig2_weight_decay)

    for seed in range(args.seeds) if args.parts & {"table1", "lowrank"} else []:
        for row, init, regularizer in LOWRANK_ROWS:
            lowrank_run(f"{row} | seed {seed}", row, init, regularizer, seed)
        if "table1" not in args.parts:  # "lowrank": Table 1's four low-rank rows only
            continue
        key = f"dense | seed {seed}"
        dense_key, prune_key = key, f"pruning | seed {seed}"
        if not (runs.done(dense_key) and runs.done(prune_key)):
            model = dense_model(args, data, seed)
            accuracy, log, seconds, _ = train(model, data, args, seed=seed)
            if not runs.done(dense_key):
                runs.add(dense_key, row="dense", seed=seed, accuracy=accuracy, params=dense_params, params_ratio=1.0,
                         seconds=seconds, log=log)
            # Pruning peer: global L1 magnitude pruning of the trained dense model (same seed) to as many
            # nonzero parameters as the low-rank model has, then fine-tuning with the masks fixed.
            keep = runs.results[f"low-rank + SI + FD | seed {seed}"]["params"]
            magnitude_prune(model, list(names), keep)
            before = evaluate(model, data.test, data)
            accuracy, log, seconds, _ = train(model, data, args, seed=seed, epochs=args.prune_finetune_epochs,
                                              lr=args.lr / 10)
            nonzero = nonzero_params(model)
            runs.add(prune_key, row="pruning", seed=seed, accuracy=accuracy, accuracy_before_finetune=before,
                     params=nonzero, params_ratio=nonzero / dense_params, seconds=seconds, log=log)

    if "overcomplete" in args.parts:
        for seed in range(args.oc_seeds):
            dense_key, oc_key = f"oc dense | seed {seed}", f"oc overcomplete | seed {seed}"
            oc_reference = dense_model(args, data, seed, args.oc_model, args.oc_width)
            oc_params = count_params(oc_reference)
            if not runs.done(dense_key):
                accuracy, log, seconds, _ = train(oc_reference, data, args, seed=seed)
                runs.add(dense_key, row="dense", seed=seed, accuracy=accuracy, params=oc_params, params_ratio=1.0,
                         seconds=seconds, log=log)
            if not runs.done(oc_key):
                dense = dense_model(args, data, seed, args.oc_model, args.oc_width)
                plan = uniform_plan(dense, rank_scale=3.0, kind="overcomplete", init="spectral", regularizer="fd")
                model = factorize(dense, plan, generator=torch.Generator().manual_seed(seed)).to(args.device)
                train_params = count_params(model, inference=False)
                accuracy, log, seconds, _ = train(model, data, args, plan=plan, seed=seed)
                deployed = collapse(model)
                collapsed = evaluate(deployed, data.test, data)
                runs.add(oc_key, row="overcomplete", seed=seed, accuracy=collapsed, factorized_accuracy=accuracy,
                         params=count_params(deployed), params_ratio=count_params(deployed) / oc_params,
                         train_params=train_params, seconds=seconds, log=log)

    report(args, runs, out, settings, dense_params, ranks, time.perf_counter() - wall)


def _mean_std(values):
    values = [100 * v for v in values]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def report(args, runs, out: Path, settings, dense_params, ranks, wall_s):
    results = list(runs.results.values())
    text = ["# Paper checks (Khodak et al. 2021) on a CIFAR-10 subset\n",
            f"machine: {machine()}; script wall time {wall_s / 60:.1f} min (runs already in runs.jsonl are reused)\n",
            "settings: `" + json.dumps(settings) + "`\n",
            f"Model {args.model} width x{args.width:g} ({dense_params:,} params); low-rank ranks at "
            f"{args.params_ratio:g} params: {sorted(set(ranks.values()))} (stage 1 / 2 / 3). Accuracy = top-1 on the "
            f"first {args.test_subset or 'all'} test images after the last epoch; SGD momentum 0.9, lr {args.lr} "
            f"×0.1 at 50%/75%, batch {args.batch_size}, weight decay {args.weight_decay} (= FD coefficient).\n"]

    rows = ["dense", "low-rank", "low-rank + SI", "low-rank + FD", "low-rank + SI + FD", "pruning"]
    table = []
    for row in rows:
        members = [r for r in results if r.get("row") == row and not r["key"].startswith("oc ")]
        if not members:
            continue
        table.append([row, len(members), _mean_std([m["accuracy"] for m in members]),
                      statistics.mean(m["params_ratio"] for m in members),
                      statistics.mean(m["seconds"] for m in members) / 60,
                      PAPER_CIFAR10.get(row, "-")])
    if table:
        text += ["## Table 1 (test accuracy %, mean ± std over seeds)\n",
                 markdown_table(["model", "seeds", "accuracy %", "params ratio", "train min/run",
                                 "paper (full CIFAR-10, 200 ep)"], table),
                 f"\nPruning: global L1 magnitude pruning (torch.nn.utils.prune.global_unstructured) of the trained "
                 f"dense model of the same seed, over the same layers the low-rank models factorize, to the "
                 f"low-rank + SI + FD model's parameter count; then {args.prune_finetune_epochs} epochs of "
                 f"fine-tuning at lr {args.lr / 10:g} with the masks fixed.\n"]
        per_seed = []
        for row in rows:
            members = sorted((r for r in results if r.get("row") == row and not r["key"].startswith("oc ")),
                             key=lambda r: r["seed"])
            if members:
                per_seed.append([row] + [f"{100 * m['accuracy']:.2f}" for m in members])
        text += ["Per seed:\n", markdown_table(["model"] + [f"seed {s}" for s in range(args.seeds)],
                                               [r + ["-"] * (args.seeds + 1 - len(r)) for r in per_seed]), ""]

    curves = {row: r["log"] for r in results for row, _, _ in LOWRANK_ROWS if r.get("row") == f"fig2 {row}"}
    exposures = {row: r["exposure"] for r in results for row, _, _ in LOWRANK_ROWS if r.get("row") == f"fig2 {row}"}
    if curves:
        exposure = statistics.mean(exposures.values())
        table1_exposure = [r["exposure"] for r in results if r.get("row") == "low-rank" and "exposure" in r]
        text += ["## Figure 2: mean over factorized layers of ‖UVᵀ‖_* / ½(‖U‖²+‖V‖²) (seed 0)\n",
                 f"Own runs: {args.fig2_epochs} epochs, batch {args.fig2_batch_size}, λ {args.fig2_weight_decay:g} "
                 f"(WD and FD), decay exposure λ·Σlr = {exposure:.2f}"
                 + (f" (Table 1 runs: {table1_exposure[0]:.3g})" if table1_exposure else "")
                 + ". Weight decay shrinks the gap between ‖U‖² and ‖V‖² by about exp(-2·exposure); "
                 "Frobenius decay leaves it alone.\n"]
        epochs = sorted({e["epoch"] for log in curves.values() for e in log})
        shown = sorted(set([0, 1, 2] + list(range(0, max(epochs) + 1, max(1, max(epochs) // 6))) + [max(epochs)]))
        shown = [e for e in shown if e in epochs]
        header = ["run (regularizer, init)"] + [f"ep {e}" for e in shown]
        labels = {"low-rank": "WD, default init", "low-rank + SI": "WD, spectral init",
                  "low-rank + FD": "FD, default init", "low-rank + SI + FD": "FD, spectral init"}
        lines = []
        for row, log in curves.items():
            by_epoch = {e["epoch"]: e["nuclear_ratio"] for e in log}
            lines.append([labels[row]] + [by_epoch.get(e, float("nan")) for e in shown])
        text += [markdown_table(header, lines), ""]
        plot_ratios(curves, labels, out / "figure2.png")
        text += ["![figure 2](figure2.png)\n"]

    oc = [r for r in results if r["key"].startswith("oc ")]
    if oc:
        lines = []
        for row in ("dense", "overcomplete"):
            members = [r for r in oc if r["row"] == row]
            extra = (_mean_std([m["factorized_accuracy"] for m in members]) if row == "overcomplete" else "-")
            lines.append([row, len(members), _mean_std([m["accuracy"] for m in members]), extra,
                          statistics.mean(m.get("train_params", m["params"]) for m in members),
                          statistics.mean(m["params"] for m in members),
                          statistics.mean(m["seconds"] for m in members) / 60])
        text += [f"## Overcomplete (rank scale 3, spatial layout, SI + FD, collapsed) vs dense: "
                 f"{args.oc_model} x{args.oc_width:g}\n",
                 markdown_table(["training", "seeds", "deployed accuracy %", "accuracy before collapse %",
                                 "trained params", "deployed params", "train min/run"], lines), ""]
    (out / "table.md").write_text("\n".join(text))
    write_json(out / "results.json", {"settings": settings, "runs": results})
    print("\n".join(text), flush=True)


def plot_ratios(curves, labels, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"low-rank": ("tab:blue", "--"), "low-rank + SI": ("tab:blue", "-"),
              "low-rank + FD": ("tab:red", "--"), "low-rank + SI + FD": ("tab:red", "-")}
    for row, log in curves.items():
        color, style = styles[row]
        ax.plot([e["epoch"] for e in log], [e["nuclear_ratio"] for e in log], style, color=color, label=labels[row])
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("‖UVᵀ‖* / ½(‖U‖²+‖V‖²)  (mean over layers)")
    ax.set_title("nuclear norm vs its weight-decay bound")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
