"""``python -m automl_factor.search``: find per-layer factorization plans on the Pareto front of
accuracy, parameters and latency, with Ray Tune, Optuna and MO-ASHA, tracked in MLflow.

With no arguments it runs offline: a local Ray runtime, the digits data, search_spaces/default.yaml,
MLflow in ./mlflow.db and results under ./automl_runs/.
"""
from __future__ import annotations

import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..cli import Parser, fail

DEFAULT_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "default.yaml"
SCHEDULERS = ("moasha", "asha", "fifo")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        fail(f"--budget-params must be a number in (0, 1], got {text!r}")
    if not 0 < value <= 1:
        fail(f"--budget-params must be in (0, 1] (the fraction of dense parameters to keep), got {text}")
    return value


def parse_args(argv: list[str] | None = None):
    parser = Parser(prog="python -m automl_factor.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-params", type=_fraction, default=0.1,
                        help="keep at most this fraction of the dense model's parameters (default 0.1)")
    parser.add_argument("--space", default=None, help=f"search space YAML (default {DEFAULT_SPACE.name})")
    parser.add_argument("--num-samples", type=int, default=32, help="trials to run (default 32)")
    parser.add_argument("--time-budget-s", type=float, default=None, help="stop starting trials after this long")
    parser.add_argument("--sampler", choices=["tpe", "nsga2", "gp", "random"], default="tpe")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="moasha")
    parser.add_argument("--max-epochs", type=int, default=None, help="epochs of a full trial (default: the space's)")
    parser.add_argument("--grace-period", type=int, default=2, help="first rung of (MO-)ASHA, in epochs (default 2)")
    parser.add_argument("--reduction-factor", type=float, default=3.0, help="keep the top 1/this at each rung")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed, e.g. 0.25")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as resources allow)")
    parser.add_argument("--address", default=None, help="an existing Ray cluster (host:port or 'auto')")
    parser.add_argument("--storage-path", default="./automl_runs", help="local folder or s3://... shared by all nodes")
    parser.add_argument("--name", default=None, help="name of this search under the storage path (default: a timestamp)")
    parser.add_argument("--mlflow-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    parser.add_argument("--experiment", default="automl-factor", help="MLflow experiment name")
    parser.add_argument("--no-warm-start", action="store_true",
                        help="do not start from the paper's recipe (for ablations; by default it is the first trial)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue the search --name (default: the latest)")
    args = parser.parse_args(argv)
    for option in ("num_samples", "grace_period"):
        if getattr(args, option) < 1:
            fail(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if args.max_epochs is not None and args.max_epochs < 1:
        fail(f"--max-epochs must be >= 1, got {args.max_epochs}")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        fail(f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, got {args.cpus_per_trial}, {args.gpus_per_trial}")
    return args


def check_mlflow_uri(uri: str) -> None:
    """Fail early (exit 2) when the tracking store cannot be reached."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
        except (urllib.error.URLError, OSError) as error:
            fail(f"--mlflow-uri {uri!r} is unreachable ({getattr(error, 'reason', error)}); "
                 f"start a server or use sqlite:///PATH or a folder")
    elif parsed.scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            fail(f"--mlflow-uri {uri!r}: folder {str(folder)!r} does not exist")
    elif parsed.scheme not in ("", "file", "databricks", "postgresql", "mysql", "mssql"):
        fail(f"--mlflow-uri {uri!r}: unsupported scheme {parsed.scheme!r}; use http(s)://, sqlite:///, file: or a folder")


def check_address(address: str | None) -> None:
    """Fail early when --address names a host:port nobody listens on."""
    if address in (None, "auto", "local"):
        return
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        fail(f"--address must look like host:port, ray://host:port or 'auto', got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        fail(f"--address {address!r} is unreachable ({error.strerror or error}); is the Ray head running?")


@dataclass
class Prepared:
    """Everything validated before anything is written or started."""

    args: object
    space: object
    space_text: str
    data: object
    dense_params: int
    name: str
    run_uri: str


def prepare(args) -> Prepared:
    """Validate input, load the data and check the budget can be met; writes nothing."""
    from ..factorization import count_params
    from ..train import build_model, load
    from .space import group_layers, load_space, minimum_params

    space_path = Path(args.space) if args.space else DEFAULT_SPACE
    check_mlflow_uri(args.mlflow_uri)
    check_address(args.address)
    try:
        space = load_space(space_path)
        if args.max_epochs is not None:
            space = space.model_copy(update={"max_epochs": args.max_epochs})
        data = load(space.data.name, root=space.data.root, val_fraction=space.data.val_fraction,
                    train_subset=space.data.train_subset, test_subset=space.data.test_subset,
                    download=space.data.download, seed=args.seed)
        dense = build_model(space.model, data, **space.model_kwargs)
        group_layers(space, dense)
        smallest, budget = minimum_params(space, dense), args.budget_params * count_params(dense)
        if smallest > budget:
            fail(f"--budget-params {args.budget_params:g} is too small for {space.model}: {budget:,.0f} parameters, "
                 f"but the layers left dense plus rank 1 everywhere need {smallest:,} "
                 f"({smallest / count_params(dense):.4f} of dense)")
    except ValueError as error:
        fail(str(error))
    name, run_uri = _run_location(args)
    return Prepared(args, space, space_path.read_text(), data, count_params(dense), name, run_uri)


def _run_location(args) -> tuple[str, str]:
    storage = args.storage_path
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    if args.resume and not args.name:
        import pyarrow.fs as pafs
        filesystem, path = pafs.FileSystem.from_uri(storage if "://" in storage else Path(storage).as_uri())
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        names = sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)
        if not names:
            fail(f"--resume: no search to resume under {args.storage_path!r}")
        args.name = names[-1]
    name = args.name or time.strftime("search-%Y%m%d-%H%M%S")
    return name, f"{storage.rstrip('/')}/{name}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepared = prepare(args)
    from .run import run_search, print_front

    rows = run_search(prepared)
    print_front(rows, args.mlflow_uri)
    if rows and all(row["status"] == "failed" for row in rows):
        print(f"error: every trial failed; first reason: {rows[0]['reason']}", file=sys.stderr)
        return 1
    if len(rows) < args.num_samples and args.time_budget_s is None:
        print(f"\nStopped after {len(rows)} of {args.num_samples} trials. Continue with:\n"
              f"  python -m automl_factor.search --resume --name {prepared.name} --storage-path {args.storage_path} "
              f"--mlflow-uri {args.mlflow_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
