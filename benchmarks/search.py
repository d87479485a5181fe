"""Search benchmark: hypervolume of the Pareto front against compute, at equal budget, per method.

Drives the real command line (``python -m automl_factor.search``) as a subprocess for each method
and seed, reads back ``trials.parquet`` and computes, with the library's reference point
(``automl_factor.search.pareto.OBJECTIVES``' hv_reference on accuracy, params_ratio / budget,
latency_ratio), the hypervolume of the full-budget trials finished so far against wall time and trial-epochs.

Methods (every search gets the same time budget, trial cap, epochs, data and parameter budget):

- ``ours``: the CLI default, TPE + MO-ASHA (+ the paper point as warm start, budget-feasible plans);
- ``random_fifo``: random sampler, no early stopping, no warm start;
- ``tpe_asha``: TPE with Ray's plain (accuracy-only) ASHA, no warm start;
- ``paper``: the paper's recipe, one uniform rank ratio for every layer (low-rank, spectral init,
  Frobenius decay), swept over budget_use by the random sampler, no early stopping (its first
  trial is the full-budget point).

    python benchmarks/search.py                       # ~1 h on 2 CPU cores: 4 methods x 3 seeds,
                                                      # 2000 images, 4 epochs, <= 40 trials, 250 s each
    python benchmarks/search.py --quick --data digits # smoke test
    # GPU cluster: --address auto --device cuda --gpus-per-trial 0.25 --train-subset 45000 --max-epochs 30
    #              --num-samples 64 --time-budget-s 3600
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import yaml

from _common import DEFAULT_DATA, REPO, data_spec, machine, markdown_table, write_json
from automl_factor.search.pareto import NAMES as HV_OBJECTIVES
from automl_factor.search.pareto import hv_reference
from automl_factor.search.tracking import search_hypervolume

HV_REFERENCE = hv_reference()  # params read as a fraction of the budget

METHODS = {
    "ours": {"sampler": "tpe", "scheduler": "moasha", "space": "ours", "warm_start": True},
    "random_fifo": {"sampler": "random", "scheduler": "fifo", "space": "ours", "warm_start": False},
    "tpe_asha": {"sampler": "tpe", "scheduler": "asha", "space": "ours", "warm_start": False},
    "paper": {"sampler": "random", "scheduler": "fifo", "space": "paper", "warm_start": True},
}
DEFAULT_SPACE = REPO / "search_spaces" / "default.yaml"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="CIFAR-10 parquet folder, or 'digits' (smoke test)")
    parser.add_argument("--out", default="benchmarks/out/search")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3; quick 1)")
    parser.add_argument("--num-samples", type=int, default=None, help="trial cap per search (default 40; quick 2)")
    parser.add_argument("--max-epochs", type=int, default=None, help="epochs of a full trial (default 4; quick 1)")
    parser.add_argument("--train-subset", type=int, default=None, help="training images (default 2000)")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="share of the CIFAR train split held out for validation (default 0.02 = 1000 images)")
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="wall budget of each search (default 250 s; quick none)")
    parser.add_argument("--budget-params", type=float, default=0.1)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--methods", default=None, help=f"comma list of {', '.join(METHODS)} (quick: ours,paper)")
    parser.add_argument("--concurrency", type=int, default=None, help="trials at once (default: CPU count)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: trials get GPUs (default share 1/concurrency each, see --gpus-per-trial)")
    parser.add_argument("--gpus-per-trial", type=float, default=None)
    parser.add_argument("--address", default=None, help="an existing Ray cluster (GPU-cluster version)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seeds = args.seeds or (1 if quick else 3)
    args.num_samples = args.num_samples or (2 if quick else 40)
    args.max_epochs = args.max_epochs or (1 if quick else 4)
    if args.time_budget_s is None and not quick:
        args.time_budget_s = 250.0
    args.methods = (args.methods or ("ours,paper" if quick else ",".join(METHODS))).split(",")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    args.concurrency = args.concurrency or os.cpu_count() or 1
    if args.gpus_per_trial is None:
        args.gpus_per_trial = 1.0 / args.concurrency if args.device == "cuda" else 0.0
    if args.device == "cpu" and args.gpus_per_trial:
        parser.error(f"--gpus-per-trial {args.gpus_per_trial} needs --device cuda")
    return args


def write_spaces(args, folder: Path) -> dict[str, Path]:
    """The default space with this benchmark's data, and the paper's one-ratio space."""
    base = yaml.safe_load(DEFAULT_SPACE.read_text())
    base["model"] = args.model
    spec = data_spec(args.data)
    if spec != "digits":
        base["data"] = {"name": spec, "val_fraction": args.val_fraction or 0.02, "test_subset": 2000}
        if args.train_subset:
            base["data"]["train_subset"] = args.train_subset
        else:
            base["data"]["train_subset"] = 2000
    elif args.train_subset:
        base["data"]["train_subset"] = args.train_subset
    base["max_epochs"] = args.max_epochs
    paper = {key: value for key, value in base.items() if key != "groups"}
    paper["groups"] = [{"name": "all", "layers": ["*"], "kinds": ["lowrank"], "rank_fraction": [1.0, 1.0],
                        "layouts": ["spatial"], "inits": ["spectral"], "regularizers": ["fd"]}]
    folder = folder.resolve()
    paths = {"ours": folder / "space_ours.yaml", "paper": folder / "space_paper.yaml"}
    paths["ours"].write_text(yaml.safe_dump(base, sort_keys=False))
    paths["paper"].write_text(yaml.safe_dump(paper, sort_keys=False))
    return paths


def run_one(args, method: str, seed: int, spaces: dict, out: Path) -> dict:
    """One search through the CLI; returns its rows and wall time (reused if already finished)."""
    name = f"{method}-seed{seed}"
    storage = out / "runs"
    done_file = storage / name / "benchmark_done.json"
    if done_file.exists():
        record = json.loads(done_file.read_text())
        if record.get("settings") == settings_of(args):
            print(f"{name}: reusing finished search", flush=True)
            return record
    if (storage / name).exists():
        import shutil

        shutil.rmtree(storage / name)
    spec = METHODS[method]
    command = [sys.executable, "-m", "automl_factor.search", "--space", str(spaces[spec["space"]]),
               "--sampler", spec["sampler"], "--scheduler", spec["scheduler"], "--num-samples", str(args.num_samples),
               "--max-epochs", str(args.max_epochs), "--budget-params", str(args.budget_params),
               "--seed", str(seed), "--name", name, "--storage-path", str(storage.resolve()),
               "--mlflow-uri", f"sqlite:///{(out / 'mlflow.db').resolve()}", "--experiment", "benchmark-search",
               "--max-concurrent", str(args.concurrency)]
    if args.time_budget_s:
        command += ["--time-budget-s", str(args.time_budget_s)]
    if not spec["warm_start"]:
        command += ["--no-warm-start"]
    if args.gpus_per_trial:
        command += ["--gpus-per-trial", str(args.gpus_per_trial)]
    if args.address:
        command += ["--address", args.address]
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    log = (out / "logs")
    log.mkdir(parents=True, exist_ok=True)
    import pyarrow.parquet as pq

    # A private Ray temp dir: another local Ray session on the machine (tests, a second search) can
    # neither attach to this search's cluster nor take it down when it shuts down.
    ray_tmp = Path(f"/tmp/afbench-{os.getpid()}-{name}")
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    for attempt in (1, 2):
        started = time.time()
        with open(log / f"{name}.log", "w") as handle:
            result = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)
        wall = time.time() - started
        import shutil

        if result.returncode != 0:
            tail = (log / f"{name}.log").read_text().splitlines()[-15:]
            message = f"search {name} failed (exit {result.returncode}):\n" + "\n".join(tail)
            if attempt == 2:
                raise RuntimeError(message)
            print(message + "\nretrying once", flush=True)
            shutil.rmtree(storage / name, ignore_errors=True)
            continue
        rows = pq.read_table(storage / name / "trials.parquet").to_pylist()
        failed = sum(row["status"] == "failed" for row in rows)
        if failed * 2 <= len(rows) or attempt == 2:
            break
        print(f"{name}: {failed}/{len(rows)} trials failed ({rows[0]['reason']!r}); retrying once", flush=True)
        shutil.rmtree(storage / name)
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)
    for row in rows:
        row.pop("checkpoint", None)
    record = {"method": method, "seed": seed, "started": started, "wall_s": wall, "rows": rows,
              "settings": settings_of(args)}
    write_json(done_file, record)
    print(f"{name}: {len(rows)} trials in {wall:.0f} s", flush=True)
    return record


def settings_of(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("out", "seeds", "methods")}


def curve(record: dict) -> list[dict]:
    """HV of the complete trials finished so far, after each finished trial, with compute spent."""
    rows = sorted(record["rows"], key=lambda r: r["finished_at"] or 0)
    points, complete, epochs, out = [], [], 0, [{"wall_s": 0.0, "trial_epochs": 0, "hv": 0.0, "hv2": 0.0}]
    for row in rows:
        epochs += int(row["epochs_trained"] or 0)
        if row["status"] == "complete" and row["accuracy"] is not None:
            points.append([row[k] for k in HV_OBJECTIVES])
            complete.append(row)
        hv = search_hypervolume(complete, record["settings"]["budget_params"])
        hv2 = _hv2(points)
        out.append({"wall_s": row["finished_at"] - record["started"], "trial_epochs": epochs, "hv": hv, "hv2": hv2})
    return out


def _hv2(points) -> float:
    """Area dominated in (accuracy ↑, params_ratio ↓) up to (0, 1): the front without latency, whose
    measurement on a shared CPU is noisy."""
    best, area = [], 0.0
    for accuracy, params, _ in sorted(points, key=lambda p: p[1]):  # by params ascending
        if accuracy > (best[-1][0] if best else 0.0) and params < 1.0:
            best.append((accuracy, params))
    for index, (accuracy, params) in enumerate(best):
        right = best[index + 1][1] if index + 1 < len(best) else 1.0
        area += accuracy * (right - params)
    return area


def hv_at(points: list[dict], key: str, budget: float) -> float:
    value = 0.0
    for point in points:
        if point[key] <= budget + 1e-9:
            value = point["hv"]
    return value


def summarize(args, records: list[dict], out: Path):
    by_method = {m: [r for r in records if r["method"] == m] for m in args.methods}
    curves = {id(r): curve(r) for r in records}
    # Equal budget: the smallest total of trial-epochs (and of wall time) any search of the same seed used.
    table, ratio_rows, detail = [], [], []
    for method, recs in by_method.items():
        if not recs:
            continue
        final = [curves[id(r)][-1]["hv"] for r in recs]
        final2 = [curves[id(r)][-1]["hv2"] for r in recs]
        at_epochs, at_wall = [], []
        for r in recs:
            peers = [p for p in records if p["seed"] == r["seed"]]
            min_epochs = min(curves[id(p)][-1]["trial_epochs"] for p in peers)
            min_wall = min(p["wall_s"] for p in peers)
            at_epochs.append(hv_at(curves[id(r)], "trial_epochs", min_epochs))
            at_wall.append(hv_at(curves[id(r)], "wall_s", min_wall))
        complete = [[row for row in r["rows"] if row["status"] == "complete"] for r in recs]
        best = [max((row["accuracy"] for row in c if row["params_ratio"] <= 0.1 + 1e-9), default=float("nan"))
                for c in complete]
        best_test = [max((row["test_accuracy"] or 0 for row in c if row["params_ratio"] <= 0.1 + 1e-9),
                         default=float("nan")) for c in complete]
        trials = [len(r["rows"]) for r in recs]
        epochs = [curves[id(r)][-1]["trial_epochs"] for r in recs]
        table.append([method, len(recs), _med(final), _med(final2), _med(at_epochs), _med(at_wall), _med(best, 100),
                      _med(best_test, 100), _med(trials), _med(epochs), _med([r["wall_s"] for r in recs])])
        for r, c in zip(recs, complete):
            lat = [row["latency_ratio"] for row in c if row["latency_ratio"] is not None]
            detail.append([method, r["seed"], len(r["rows"]), len(c), curves[id(r)][-1]["trial_epochs"], r["wall_s"],
                           curves[id(r)][-1]["hv"], curves[id(r)][-1]["hv2"],
                           f"{min(lat):.2f}–{max(lat):.2f}" if lat else "-", overhead_share(r, args.concurrency)])
    ours = by_method.get("ours", [])
    for method, recs in by_method.items():
        if method == "ours" or not recs or not ours:
            continue
        for key, label in (("hv", "3-D HV"), ("hv2", "HV (acc, params)")):
            ratios = []
            for r in recs:
                mine = [o for o in ours if o["seed"] == r["seed"]]
                if mine and curves[id(r)][-1][key] > 0:
                    ratios.append(curves[id(mine[0])][-1][key] / curves[id(r)][-1][key])
            ratio_rows.append([f"ours / {method}", label, len(ratios), _med(ratios),
                               f"{min(ratios):.3f} – {max(ratios):.3f}" if ratios else "-"])
    overheads = [(overhead_share(r, args.concurrency), len(r["rows"]), r) for r in records]
    big = [o for o in overheads if o[1] >= 20]
    text = ["# Search benchmark: hypervolume vs compute\n",
            f"machine: {machine()}\n",
            "settings: `" + json.dumps(settings_of(args)) + "`\n",
            "data (as written to the spaces): `" + json.dumps(yaml.safe_load((out / "space_ours.yaml").read_text())["data"])
            + "`\n",
            f"Hypervolume of the complete (full-budget) trials' front in ({', '.join(HV_OBJECTIVES)}), reference "
            f"{HV_REFERENCE}; accuracy is validation accuracy. 'median [min–max]' over seeds. Equal-compute columns: "
            f"each search's HV when it had spent the smallest total trial-epochs (or wall time) of any method with "
            f"the same seed.\n",
            markdown_table(["method", "seeds", "final HV", "final HV (acc, params)", "HV at equal trial-epochs", "HV at equal wall",
                            "best val acc % at ≤10% params", "its best test acc %", "trials", "trial-epochs",
                            "wall s"], table), "",
            "## Hypervolume ratio of ours over each peer (final HV, same seed)\n",
            markdown_table(["ratio", "objectives", "seeds", "median", "range"], ratio_rows), "",
            "## Per search\n",
            markdown_table(["method", "seed", "trials", "complete", "trial-epochs", "wall s", "final HV",
                            "HV (acc, params)", "latency ratios", "overhead share"], detail), "",
            "## Overhead: share of wall time x concurrency not spent in training epochs\n",
            f"overhead = 1 − Σ training_seconds / (wall × {args.concurrency} concurrent trials); wall is the CLI "
            f"subprocess from launch to exit (Ray start, data loading, MLflow, latency, evaluation, checkpoints "
            f"all count as overhead).\n",
            ("Searches with ≥ 20 trials: " + ", ".join(f"{r['method']} seed {r['seed']}: {share:.1%} ({n} trials)"
                                                        for share, n, r in big)) if big else
            "No search reached 20 trials; all searches: " + ", ".join(
                f"{r['method']} seed {r['seed']}: {share:.1%} ({n} trials)" for share, n, r in overheads), "",
            "![hypervolume vs compute](hypervolume.png)\n"]
    (out / "table.md").write_text("\n".join(text))
    write_json(out / "results.json", {"settings": settings_of(args), "records": records,
                                      "curves": {f"{r['method']}-seed{r['seed']}": curves[id(r)] for r in records}})
    plot(records, curves, out / "hypervolume.png")
    print("\n".join(text), flush=True)


def overhead_share(record: dict, concurrency: int) -> float:
    training = sum(row["training_seconds"] or 0.0 for row in record["rows"])
    return 1 - training / (record["wall_s"] * concurrency)


def _med(values, scale=1.0):
    values = [v * scale for v in values if v == v]
    if not values:
        return "-"
    fmt = (lambda v: f"{v:g}") if all(float(v).is_integer() for v in values) else (lambda v: f"{v:.3f}")
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} [{fmt(min(values))}–{fmt(max(values))}]"


def plot(records, curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = dict(zip(METHODS, ("tab:red", "tab:gray", "tab:blue", "tab:green")))
    seen = set()
    for r in records:
        points = curves[id(r)]
        label = r["method"] if r["method"] not in seen else None
        seen.add(r["method"])
        for ax, key in zip(axes, ("wall_s", "trial_epochs")):
            ax.step([p[key] for p in points], [p["hv"] for p in points], where="post", color=colors[r["method"]],
                    alpha=0.8, label=label)
    axes[0].set_xlabel("wall time (s, from CLI launch)")
    axes[1].set_xlabel("trial-epochs spent")
    for ax in axes:
        ax.set_ylabel("hypervolume")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Pareto-front hypervolume vs compute (one line per seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spaces = write_spaces(args, out)
    print(f"machine: {machine()}\nsettings: {json.dumps(settings_of(args))}", flush=True)
    records = []
    for seed in range(args.seeds):  # seeds outermost: an interrupted run still has every method at some seed
        for method in args.methods:
            try:
                records.append(run_one(args, method, seed, spaces, out))
            except RuntimeError as error:  # keep the other searches; the table says which is missing
                print(f"SKIPPED {method} seed {seed}: {error}", flush=True)
    summarize(args, records, out)


if __name__ == "__main__":
    main()
