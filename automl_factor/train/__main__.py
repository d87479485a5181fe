"""``python -m automl_factor.train``: train one uniformly factorized model (the paper's recipe).

Every factorizable layer gets the same fraction of its full rank, the largest fraction whose
deployed model keeps at most ``--rank-ratio`` of the dense parameters (or ``--rank-scale`` fixed,
above 1 for overcomplete). Prints progress per epoch, then accuracy, params, FLOPs and latency
ratios against the dense model.
"""
from __future__ import annotations

import argparse

import shlex
import sys
import time
from pathlib import Path

import torch

from ..cli import DefaultsFormatter, Parser, fail
from ..factorization import count_params, factorize, kind_names, uniform_plan
from .build import build_model
from .data import load
from .loop import TrainConfig, TrainingDiverged, evaluate, fit
from .measure import count_flops, latency_ms


def parse_args(argv: list[str] | None = None):
    parser = Parser(prog="python -m automl_factor.train", description=__doc__.split("\n\n")[0],
                    formatter_class=DefaultsFormatter)
    parser.add_argument("--model", default="resnet20", help="registered model name or module.path:function")
    parser.add_argument("--dataset", default="digits",
                        help="digits | cifar10 | cifar100 | imagefolder:DIR | parquet:DIR "
                             "(default: digits, bundled, offline)")
    parser.add_argument("--data-root", default=None, help="folder for cifar10/cifar100 (default: torchvision's)")
    parser.add_argument("--download", action="store_true", help="download cifar10/cifar100 if missing")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="hold out this part of train for validation (0: evaluate on test each epoch)")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="train on the first N training images (default: all)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--rank-ratio", type=float, default=None,
                      help="keep at most this fraction of the dense parameters (default 0.1)")
    size.add_argument("--rank-scale", type=float, default=None,
                      help="rank = this fraction of each layer's full rank "
                           "(>1: overcomplete; default: use --rank-ratio)")
    size.add_argument("--dense", action="store_true", help="train the dense model, unfactorized")
    parser.add_argument("--kind", choices=[k for k in kind_names() if k != "dense"], default="lowrank",
                        help="a registered factorization kind: lowrank U V^T; deep U M V^T with M = I at init; "
                             "overcomplete (with --rank-scale > 1): trained wide, deployed dense")
    parser.add_argument("--layout", choices=["spatial", "channel"], default="spatial",
                        help="conv factorization: spatial (1xk then kx1 conv) or channel (kxk then 1x1 conv)")
    parser.add_argument("--init", choices=["spectral", "default"], default="spectral",
                        help="spectral: factors from the SVD of the dense init (SI); default: PyTorch's init")
    parser.add_argument("--regularizer", choices=["fd", "wd", "none"], default="fd",
                        help="what decays the factors: fd (Frobenius decay of their product), wd (weight decay), "
                             "none (and then no weight decay anywhere)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=128, help="training images per step")
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd", help="optimizer")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (unused by AdamW)")
    parser.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="also the Frobenius decay coefficient")
    parser.add_argument("--schedule", choices=["multistep", "cosine"], default="multistep",
                        help="multistep: lr x0.1 at 50%% and 75%% of training; cosine: cosine decay to 0")
    parser.add_argument("--warmup-epochs", type=float, default=0.0,
                        help="linear lr warmup, in epochs (fractions allowed)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster on GPUs)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the training step (default: on for CUDA, off for CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to train (default: cuda when a GPU is visible, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed for init, data split and augmentation")
    parser.add_argument("--mlflow-uri", default=None,
                        help="also log the run (settings, results, and the --out folder) to this MLflow tracking URI "
                             "(default: no MLflow)")
    parser.add_argument("--experiment", default="automl-factor", help="MLflow experiment, with --mlflow-uri")
    parser.add_argument("--out", default=None, metavar="FOLDER",
                        help="save the trained model in this folder (created), for python -m automl_factor.export "
                             "--checkpoint FOLDER (default: save nothing)")
    args = parser.parse_args(argv)
    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            fail(f"--out {args.out!r} is a file; it names a folder to save the model in")
        if not out.resolve().parent.is_dir():
            fail(f"--out {args.out!r}: folder {str(out.resolve().parent)!r} does not exist")
    if args.rank_ratio is not None and not 0 < args.rank_ratio <= 1:
        fail(f"--rank-ratio must be in (0, 1], got {args.rank_ratio}")
    if args.rank_scale is not None and args.rank_scale <= 0:
        fail(f"--rank-scale must be > 0, got {args.rank_scale}")
    if args.rank_ratio is None and args.rank_scale is None and not args.dense:
        args.rank_ratio = 0.1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                             momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay,
                             schedule=args.schedule, warmup_epochs=args.warmup_epochs,
                             channels_last=args.channels_last, compile=args.compile)
        if args.regularizer == "none":  # nothing decays: neither the factors nor the other weights
            config = config.model_copy(update={"weight_decay": 0.0})
        data = load(args.dataset, root=args.data_root, download=args.download, val_fraction=args.val_fraction,
                    train_subset=args.train_subset, seed=args.seed)
        dense = build_model(args.model, data).to(args.device)
        model, plan = dense, {}
        if not args.dense:
            plan = uniform_plan(dense, params_ratio=args.rank_ratio, rank_scale=args.rank_scale, kind=args.kind,
                                init=args.init, layout=args.layout,
                                regularizer=args.regularizer)
            model = factorize(dense, plan)
    except ValueError as error:
        fail(str(error))
    tracking = _mlflow_client(args.mlflow_uri) if args.mlflow_uri else None  # checked before training
    dense_params = count_params(dense)
    print(f"{args.model} on {args.dataset}: {len(data.train.labels)} train images, "
          f"{count_params(model):,} of {dense_params:,} params after collapse "
          f"({count_params(model) / dense_params:.3f}), {count_params(model, inference=False):,} trained",
          flush=True)

    def show(epoch: int, metrics: dict) -> None:
        print(f"epoch {epoch:3d}/{config.epochs}  loss {metrics['loss']:.4f}  train {metrics['train_accuracy']:.2%}"
              f"  eval {metrics['accuracy']:.2%}  {metrics['seconds']:.1f}s "
              f"({metrics['images'] / metrics['seconds']:.0f} img/s)", flush=True)

    started = time.perf_counter()
    try:
        history = fit(model, data, config, seed=args.seed, plan=plan or None, on_epoch=show)
    except TrainingDiverged as error:
        fail(str(error))
    test_accuracy = evaluate(model, data.test, data)
    shape = (1, *data.image_shape)
    flops, dense_flops = count_flops(model, shape), count_flops(dense, shape)
    latency, dense_latency = latency_ms(model, shape), latency_ms(dense, shape)
    print(f"done in {time.perf_counter() - started:.0f}s")
    print(f"test accuracy  {test_accuracy:.2%}")
    print(f"params ratio   {count_params(model) / dense_params:.4f}  ({count_params(model):,} / {dense_params:,})")
    print(f"FLOPs ratio    {flops / dense_flops:.4f}  ({flops:,} / {dense_flops:,} per image)")
    print(f"latency        {latency:.3f} ms vs dense {dense_latency:.3f} ms (batch 1, 1 thread, collapsed)")
    metrics = {"accuracy": history[-1]["accuracy"] if data.val is not None and history else None,
               "test_accuracy": test_accuracy, "params": count_params(model),
               "params_ratio": count_params(model) / dense_params, "flops_ratio": flops / dense_flops,
               "latency_ratio": latency / dense_latency, "latency_ms": latency, "dense_latency_ms": dense_latency,
               "epochs_trained": config.epochs}
    if args.out is not None:
        save_trained(args, model, data, plan, command=sys.argv[1:] if argv is None else argv, metrics=metrics)
        print(f"saved          {args.out}  (export it: python -m automl_factor.export --checkpoint {args.out})")
    if tracking is not None:
        run_id = _log_run(tracking, args, metrics, history)
        print(f"MLflow run     {run_id} in experiment {args.experiment!r} at {args.mlflow_uri}")


def _mlflow_client(uri: str):
    """An MLflow client for ``--mlflow-uri``, checked by one call before any training (MLflow is
    imported only by this command line, on request)."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any unreachable store gets the same one-line answer
        fail(f"--mlflow-uri {uri!r} is unusable ({type(error).__name__}: {str(error).splitlines()[0][:200]})")
    return client


def _log_run(client, args, metrics: dict, history: list[dict]) -> str:
    """One MLflow run: the command's settings, per-epoch and final metrics, and the saved model."""
    experiment = client.get_experiment_by_name(args.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(args.experiment)
    name = (f"train·{args.model}·{'dense' if args.dense else args.kind}·p{metrics['params_ratio']:.3f}"
            f"·acc{metrics['test_accuracy']:.3f}")
    run_id = client.create_run(experiment_id, run_name=name, tags={"automl_factor.role": "train"}).info.run_id
    for key, value in sorted(vars(args).items()):
        client.log_param(run_id, key, str(value))
    for epoch, row in enumerate(history, start=1):
        for key in ("loss", "train_accuracy", "accuracy"):
            client.log_metric(run_id, "eval_accuracy" if key == "accuracy" else key, row[key], step=epoch)
    for key, value in metrics.items():
        if value is not None:
            client.log_metric(run_id, key, float(value))
    if args.out is not None:
        client.log_artifacts(run_id, args.out, "model")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def save_trained(args, model, data, plan: dict, *, command: list[str], metrics: dict) -> None:
    """The trained model as a checkpoint folder (``train.checkpoint`` format, as search trials write)."""
    from .checkpoint import write_checkpoint

    info = {"model": args.model, "model_kwargs": {}, "num_classes": data.num_classes,
            "image_shape": list(data.image_shape), "mean": list(data.mean), "std": list(data.std),
            "plan": {name: layer.model_dump() for name, layer in plan.items()}, "metrics": metrics,
            "source": {"command": shlex.join(["python", "-m", "automl_factor.train", *command]),
                       "dataset": args.dataset, "seed": args.seed}}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_checkpoint(args.out, {"model": model.state_dict(), "epoch": metrics["epochs_trained"]}, info)


if __name__ == "__main__":
    sys.exit(main())
