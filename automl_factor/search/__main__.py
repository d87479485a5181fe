"""``python -m automl_factor.search``: find per-layer factorization plans on the Pareto front of
accuracy, parameters and latency, with Ray Tune, Optuna and MO-ASHA, tracked in MLflow.

With no arguments it runs offline: a local Ray runtime, the digits data, search_spaces/default.yaml,
MLflow in ./mlflow.db and results under ./automl_runs/.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shlex
import sys

from pydantic import ValidationError

from ..cli import DefaultsFormatter, Parser, UsageError, fail
from .options import SAMPLERS, SCHEDULERS, SearchOptions
from .prepare import DEFAULT_SPACE, prepare


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (the fraction of dense parameters to keep), got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> SearchOptions:
    """The command line as ``SearchOptions`` (bad values: one line, exit 2)."""
    defaults = SearchOptions()
    parser = Parser(prog="python -m automl_factor.search", description=__doc__.split("\n\n")[0],
                    formatter_class=DefaultsFormatter)
    parser.add_argument("--budget-params", type=_fraction, default=defaults.budget_fraction,
                        help="keep at most this fraction of the dense model's parameters")
    parser.add_argument("--space", default=None,
                        help=f"search space YAML, or a name in search_spaces/ (default {DEFAULT_SPACE.name})")
    parser.add_argument("--num-samples", type=int, default=defaults.num_samples, help="trials to run")
    parser.add_argument("--time-budget-s", type=float, default=None, help="stop starting trials after this long")
    parser.add_argument("--sampler", choices=SAMPLERS, default=defaults.sampler, help="Optuna sampler")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default=defaults.scheduler,
                        help="moasha: Pareto-rank successive halving; asha: Ray's, on accuracy; fifo: no stopping")
    parser.add_argument("--max-epochs", type=int, default=None, help="epochs of a full trial (default: the space's)")
    parser.add_argument("--grace-period", type=int, default=None,
                        help="first rung of (MO-)ASHA, in epochs (default: a third of the epochs of a full trial)")
    parser.add_argument("--reduction-factor", type=float, default=defaults.reduction_factor,
                        help="keep the top 1/this at each rung")
    parser.add_argument("--cpus-per-trial", type=float, default=defaults.cpus_per_trial, help="CPUs per trial")
    parser.add_argument("--gpus-per-trial", type=float, default=None,
                        help="GPUs per trial, fractions pack trials on a GPU (default: 0.25 when the cluster has "
                             "GPUs, else 0)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as resources allow)")
    parser.add_argument("--address", default=None, help="an existing Ray cluster (host:port or 'auto')")
    parser.add_argument("--storage-path", default=defaults.storage_path,
                        help="local folder or s3://... shared by all nodes")
    parser.add_argument("--name", default=None, help="name of this search under the storage path (default: a timestamp)")
    parser.add_argument("--mlflow-uri", default=defaults.mlflow_uri, help="MLflow tracking URI")
    parser.add_argument("--experiment", default=defaults.experiment, help="MLflow experiment name")
    parser.add_argument("--no-warm-start", action="store_true",
                        help="do not start from the paper's recipe (for ablations; by default it is the first trial)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile each trial's training step (default: on for GPU trials, off on CPU)")
    parser.add_argument("--checkpoint-every-s", type=float, default=defaults.checkpoint_every_s,
                        help="checkpoint each trial at least this often, in seconds of training, besides at the "
                             "rungs and its last epoch: the most a lost node or dead worker costs (0: every epoch)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds Optuna and the trials")
    parser.add_argument("--resume", action="store_true", help="continue the search --name (default: the latest)")
    args = vars(parser.parse_args(argv))
    args["budget_fraction"] = args.pop("budget_params")
    args["warm_start"] = not args.pop("no_warm_start")
    try:
        return SearchOptions(**args)
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0])
        flag = "--budget-params" if field == "budget_fraction" else "--" + field.replace("_", "-")
        fail(f"{flag}: {first['msg']}, got {first.get('input')!r}")


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        prepared = prepare(options)  # validates everything, writes nothing; --resume: the saved settings
        from .run import print_front, run_search, search_outcome

        rows, noise = run_search(prepared)
    except UsageError as error:
        fail(str(error))
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the trials started
        print("\ninterrupted", file=sys.stderr)
        return 130
    options = prepared.options
    print_front(rows, options.mlflow_uri, budget=options.budget_fraction, noise=noise, run_uri=prepared.run_uri)
    outcome = search_outcome(rows)
    if outcome == "failed":
        print(f"error: every trial failed; first reason: {rows[0]['reason']}", file=sys.stderr)
        return 1
    if outcome in ("interrupted", "out_of_time"):
        left = sum(row["status"] == "interrupted" for row in rows)
        why = "Interrupted" if outcome == "interrupted" else "The time budget ran out"
        command = shlex.join([sys.executable, "-m", "automl_factor.search", "--resume", "--name", prepared.name,
                              "--storage-path", options.storage_path])
        print(f"\n{why} with {left} trial(s) unfinished. Continue the same search with:\n  {command}")
    return 130 if outcome == "interrupted" else 0  # 130: as a shell reports a Ctrl-C


def _exit_now(code: int) -> None:
    """Exit without Python's teardown of the torch, Ray and MLflow modules, which took 2 s after
    every search (measured on the 2-core VM): exit handlers run and the streams are flushed; every
    file the search wrote is already closed."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
