"""Compressing a trained ResNet-20: searched per-layer ranks vs one uniform ratio vs training from scratch.

A ResNet-20 is trained on the CIFAR-10 Parquet data (the training is part of the script), then, for
each params ratio and seed, compressed four ways, each fine-tuned / trained for the same epochs:

(a) ``uniform``: one rank ratio for every layer (truncated SVD of the trained weights), then fine-tuning;
(b) ``energy``: the spectrum prior (each stage keeps 90% of its singular-value energy, scaled to the
    budget), then fine-tuning;
(c) ``search``: ``python -m automl_factor.compress`` (its best validation model), whose trials fine-tune
    for the same epochs (it spends more trial-epochs in all: reported);
(d) ``scratch``: the architecture of (a) trained from a fresh init for the same epochs.

Reports accuracy before fine-tuning (zero-shot) and after, mean ± std over seeds.

    python benchmarks/compress.py                         # CPU: 5000 images, ~1 h
    python benchmarks/compress.py --device cuda --train-subset 50000 --dense-epochs 30 --epochs 10
    python benchmarks/compress.py --quick --data digits   # smoke test
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import torch

from _common import DEFAULT_DATA, data_spec, machine, markdown_table, write_json
from automl_factor.compress import compression_space
from automl_factor.factorization import count_params, factorize, fit_to_budget, uniform_plan
from automl_factor.search.space import SearchSpace, energy_point, plan_for
from automl_factor.train import TrainConfig, build_model, evaluate, fit, load

METHODS = ("uniform", "energy", "search", "scratch")
VAL_FRACTION = 0.1  # as the search splits it (seeded by --seed): the dense model never trains on its validation images


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="CIFAR-10 parquet folder, or 'digits' (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/out/compress")
    parser.add_argument("--ratios", default="0.3,0.1", help="params ratios to compress to")
    parser.add_argument("--seeds", type=int, default=None, help="default 3; quick 1")
    parser.add_argument("--train-subset", type=int, default=None, help="training images (default 5000; quick all)")
    parser.add_argument("--test-subset", type=int, default=None, help="test images scored (default 2000)")
    parser.add_argument("--dense-epochs", type=int, default=None, help="epochs training the dense model (default 15)")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning / scratch epochs (default 5; quick 1)")
    parser.add_argument("--search-samples", type=int, default=None, help="trials of the search (default 12)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.train_subset = args.train_subset or (None if args.quick else 5000)
    args.test_subset = args.test_subset or (None if args.quick else 2000)
    args.dense_epochs = args.dense_epochs or (2 if args.quick else 15)
    args.epochs = args.epochs or (1 if args.quick else 5)
    args.search_samples = args.search_samples or (2 if args.quick else 12)
    args.ratios = [float(r) for r in args.ratios.split(",")]
    return args


def fine_tune(model, data, epochs: int, seed: int, plan=None) -> float:
    """The compress command's fine-tuning recipe (SGD, lr 0.01, cosine, FD on factorized layers)."""
    fit(model, data, TrainConfig(epochs=epochs, lr=0.01, schedule="cosine", batch_size=64), seed=seed, plan=plan)
    return evaluate(model, data.test, data)


def run_search(args, weights: Path, ratio: float, seed: int, folder: Path) -> dict:
    """The compress command as a user runs it; its best validation model's accuracies."""
    name = f"r{ratio:g}-s{seed}"
    command = [sys.executable, "-m", "automl_factor.compress", "--model", "resnet20", "--weights", str(weights),
               "--dataset", args.spec, "--budget-params", str(ratio), "--num-samples", str(args.search_samples),
               "--max-epochs", str(args.epochs), "--seed", str(seed), "--name", name, "--val-fraction", str(VAL_FRACTION),
               *(["--train-subset", str(args.train_subset)] if args.train_subset else []),
               *(["--test-subset", str(args.test_subset)] if args.test_subset else []),
               "--storage-path", str(folder / "runs"), "--mlflow-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    if completed.returncode != 0:
        raise RuntimeError(f"compress failed: {completed.stderr[-2000:]}")
    import pyarrow.parquet as pq

    rows = pq.read_table(folder / "runs" / name / "trials.parquet").to_pylist()
    best = max((row for row in rows if row["status"] == "complete"), key=lambda row: row["accuracy"])
    zero_shot = [json.loads(line).get("zero_shot_accuracy") for line in
                 (folder / "runs" / name / f"trial_{best['trial_id']}" / "result.json").read_text().splitlines()]
    return {"accuracy": best["test_accuracy"], "zero_shot": zero_shot[0], "params_ratio": best["params_ratio"],
            "trial_epochs": sum(row["epochs_trained"] for row in rows)}


def full_config(space: SearchSpace, point: dict) -> dict:
    """A proposal with the choices a group does not sample filled in (the searcher does that in a search)."""
    config = {}
    for group in space.groups:
        for key, options in (("kind", group.kinds), ("layout", group.layouts), ("init", group.inits),
                             ("regularizer", group.regularizers)):
            config[f"{group.name}.{key}"] = options[0]
        config[f"{group.name}.rank_fraction"] = group.rank_fraction[1]
    return {**config, **point}


def main(argv=None) -> None:
    args = parse_args(argv)
    args.spec = data_spec(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"machine: {machine()}; device {args.device}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="compress-bench-"))
    results = []
    for seed in range(args.seeds):
        data = load(args.spec, val_fraction=VAL_FRACTION, train_subset=args.train_subset,
                    test_subset=args.test_subset, seed=seed)
        torch.manual_seed(seed)
        dense = build_model("resnet20", data).to(args.device)
        fit(dense, data, TrainConfig(epochs=args.dense_epochs, batch_size=64, lr=0.05), seed=seed)
        dense_accuracy = evaluate(dense, data.test, data)
        weights = work / f"dense-{seed}.pt"
        torch.save(dense.state_dict(), weights)
        print(f"seed {seed}: dense {dense_accuracy:.4f}", flush=True)
        space = SearchSpace.model_validate(compression_space("resnet20", str(weights), args.spec))
        for ratio in args.ratios:
            budget = ratio * count_params(dense)
            uniform = uniform_plan(dense, params_ratio=ratio, layout="channel")
            energy = plan_for(space, dense, full_config(space, energy_point(space, dense)), ratio)
            runs = {"uniform": (factorize(dense, uniform), uniform), "energy": (factorize(dense, energy), energy)}
            for method, (model, plan) in runs.items():
                zero_shot = evaluate(model, data.test, data)
                results.append({"method": method, "ratio": ratio, "seed": seed, "dense": dense_accuracy,
                                "zero_shot": zero_shot, "accuracy": fine_tune(model, data, args.epochs, seed, plan),
                                "params_ratio": count_params(model) / count_params(dense),
                                "trial_epochs": args.epochs})
            torch.manual_seed(seed)  # (d) the uniform architecture from a fresh dense init, default factor init
            fresh = build_model("resnet20", data).to(args.device)
            scratch_plan = fit_to_budget(fresh, {n: layer.model_copy(update={"init": "default"})
                                                 for n, layer in uniform.items()}, budget)
            model = factorize(fresh, scratch_plan)
            results.append({"method": "scratch", "ratio": ratio, "seed": seed, "dense": dense_accuracy,
                            "zero_shot": evaluate(model, data.test, data),
                            "accuracy": fine_tune(model, data, args.epochs, seed, scratch_plan),
                            "params_ratio": count_params(model) / count_params(dense), "trial_epochs": args.epochs})
            results.append({"method": "search", "ratio": ratio, "seed": seed, "dense": dense_accuracy,
                            **run_search(args, weights, ratio, seed, work)})
            for row in results[-4:]:
                print(f"  ratio {ratio:g} {row['method']:8s} zero-shot {row['zero_shot']:.4f} -> "
                      f"{row['accuracy']:.4f} (params {row['params_ratio']:.3f})", flush=True)
    write_json(out / "results.json", {"machine": machine(), "args": vars(args), "results": results})
    (out / "table.md").write_text(table(args, results, time.perf_counter() - started))
    print((out / "table.md").read_text(), flush=True)


def table(args, results: list[dict], seconds: float) -> str:
    def spread(values):
        values = [100 * v for v in values]
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"

    rows = []
    for ratio in args.ratios:
        for method in METHODS:
            group = [r for r in results if r["ratio"] == ratio and r["method"] == method]
            rows.append([ratio, method, spread([r["zero_shot"] for r in group]), spread([r["accuracy"] for r in group]),
                         statistics.mean(r["params_ratio"] for r in group),
                         statistics.mean(r["trial_epochs"] for r in group)])
    dense = spread([r["dense"] for r in results if r["method"] == "uniform" and r["ratio"] == args.ratios[0]])
    settings = (f"ResNet-20 on `{args.spec}` ({args.train_subset or 'all'} training images, test subset "
                f"{args.test_subset or 'all'}), dense trained {args.dense_epochs} epochs: {dense} % test; "
                f"fine-tuning / scratch {args.epochs} epochs; search {args.search_samples} trials; "
                f"{args.seeds} seed(s); {machine()}, {seconds:.0f} s.")
    return "\n".join(["# Compressing a trained model\n", settings, "",
                      markdown_table(["params ratio", "method", "test % before fine-tuning", "test % after",
                                      "params ratio reached", "trial-epochs"], rows), ""])


if __name__ == "__main__":
    main()
