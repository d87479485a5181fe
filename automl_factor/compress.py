"""``python -m automl_factor.compress``: compress a model you already trained, by searching per-layer ranks.

Builds a search space around the model and runs the search: one group of layers per stage (the first
part of the layer names: ``layer1``, ``layer2``, ... and the stem and classifier where they are
factorizable), each with its own rank; every trial factorizes the *trained* layers (spectral init of a
trained layer is its truncated SVD, or the activation-aware one on 256 training images), reports its
accuracy before any fine-tuning (``zero_shot_accuracy``), then fine-tunes with Frobenius decay for the
trial's epochs. ``--uniform`` searches only one rank ratio shared by every layer (the usual baseline).
It ends, like the search, with the front and how to export a model.

    python -m automl_factor.compress --model resnet20 --weights model.pt --dataset digits --budget-params 0.3
"""
from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import yaml

from .cli import DefaultsFormatter, Parser, UsageError, fail

__all__ = ["compression_space", "main"]


def parse_args(argv: list[str] | None = None):
    parser = Parser(prog="python -m automl_factor.compress", description=__doc__.split("\n\n")[0],
                    formatter_class=DefaultsFormatter)
    parser.add_argument("--model", required=True, help="registered model name or module:function (the trained one's)")
    parser.add_argument("--weights", required=True, help="its trained state dict (a file, or a `train --out` folder)")
    parser.add_argument("--dataset", default="digits", help="dataset spec the model was trained on (see train --help)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="training images held out to select models")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="fine-tune on the first this many training images (default: all)")
    parser.add_argument("--test-subset", type=int, default=None, help="report on the first this many test images")
    parser.add_argument("--budget-params", type=float, default=0.3, help="keep at most this fraction of the parameters")
    parser.add_argument("--uniform", action="store_true", help="one rank ratio for every layer (the baseline)")
    parser.add_argument("--max-epochs", type=int, default=4, help="fine-tuning epochs of a full trial")
    parser.add_argument("--lr", type=float, default=0.01, help="peak fine-tuning learning rate (cosine schedule)")
    parser.add_argument("--batch-size", type=int, default=64, help="fine-tuning batch size")
    parser.add_argument("--num-samples", type=int, default=16, help="trials")
    parser.add_argument("--name", default=None, help="name of this search (default: a timestamp)")
    parser.add_argument("--storage-path", default="./automl_runs", help="where the search keeps its tables")
    parser.add_argument("--mlflow-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    parser.add_argument("--seed", type=int, default=0, help="seeds Optuna and the trials")
    return parser.parse_args(argv)


def compression_space(model_name: str, weights: str, dataset: str, *, val_fraction: float = 0.2,
                      train_subset: int | None = None, test_subset: int | None = None, uniform: bool = False,
                      max_epochs: int = 4, lr: float = 0.01, batch_size: int = 64) -> dict:
    """The search space (as the YAML mapping a space file holds) that compresses ``model_name``."""
    from .factorization import factorizable_layers
    from .train import build_model, load

    data = load(dataset, val_fraction=val_fraction)
    layers = factorizable_layers(build_model(model_name, data))
    if uniform:
        groups = [{"name": "all", "layers": ["*"], "kinds": ["lowrank"], "rank_fraction": [1.0, 1.0],
                   "layouts": ["channel"], "inits": ["spectral"], "regularizers": ["fd"]}]
    else:
        stages = list(dict.fromkeys(layer.split(".")[0] for layer in layers))
        groups = [{"name": re.sub(r"\W", "_", stage), "layers": [stage, f"{stage}.*"], "kinds": ["lowrank"],
                   "rank_fraction": [0.02, 1.0], "layouts": ["channel"], "inits": ["spectral", "activation"],
                   "regularizers": ["fd"]} for stage in stages]
    return {"model": {"name": model_name, "weights": str(Path(weights).expanduser().resolve())},
            "data": {"name": dataset, "val_fraction": val_fraction,
                     **{key: value for key, value in (("train_subset", train_subset), ("test_subset", test_subset))
                        if value is not None}},
            "recipe": {"lr": lr, "schedule": "cosine", "batch_size": batch_size, "weight_decay": 5e-4},
            "max_epochs": max_epochs, "budget_use": [0.1, 1.0], "groups": groups}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0 < args.budget_params <= 1:
        fail(f"--budget-params must be in (0, 1], got {args.budget_params}")
    from .search import SearchOptions, run

    with tempfile.TemporaryDirectory() as folder:
        space_file = Path(folder) / "compress.yaml"
        try:
            space = compression_space(args.model, args.weights, args.dataset, val_fraction=args.val_fraction,
                                      train_subset=args.train_subset, test_subset=args.test_subset,
                                      uniform=args.uniform, max_epochs=args.max_epochs, lr=args.lr,
                                      batch_size=args.batch_size)
            space_file.write_text(yaml.safe_dump(space, sort_keys=False))
            options = SearchOptions(budget_fraction=args.budget_params, space=str(space_file),
                                    num_samples=args.num_samples, name=args.name, storage_path=args.storage_path,
                                    mlflow_uri=args.mlflow_uri, seed=args.seed)
            rows = run(options)
        except UsageError as error:
            fail(str(error))
        except ValueError as error:  # the model or dataset named on the command line
            fail(str(error))
    return 1 if rows and all(row["status"] == "failed" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
