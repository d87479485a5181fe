"""``python -m automl_factor.export``: a searched model as plain PyTorch, for deployment.

Reads a trial's last checkpoint (found through its MLflow run), rebuilds the factorized model,
collapses it to plain ``torch.nn`` layers and writes it with ``torch.export.save``. The file loads
anywhere PyTorch does, without this package::

    program = torch.export.load("model.pt2")
    logits = program.module()(images)   # float images in [0, 1], shape (N, C, H, W); normalizes inside
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import torch
from torch import nn

from .cli import Parser, fail

class Normalized(nn.Module):
    """Takes images in [0, 1] and applies the training normalization, so users need not know it."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def _read_bytes(uri: str) -> bytes:
    import pyarrow.fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def load_trial_model(checkpoint_uri: str) -> tuple[nn.Module, dict]:
    """The trained, collapsed model of a trial checkpoint (local folder or URI), and the trial's info."""
    from .train.checkpoint import INFO_FILE, STATE_FILE, read_state, rebuild_model

    info = json.loads(_read_bytes(f"{checkpoint_uri}/{INFO_FILE}"))
    state = read_state(_read_bytes(f"{checkpoint_uri}/{STATE_FILE}"))
    return rebuild_model(info, state["model"]), info


def export_program(model: nn.Module, info: dict, out: str | Path) -> torch.export.ExportedProgram:
    """``torch.export`` of the normalized model with a dynamic batch dimension, saved to ``out``."""
    wrapped = Normalized(model, info["mean"], info["std"]).eval()
    example = torch.rand(2, *info["image_shape"])
    program = torch.export.export(wrapped, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()  # written through a buffer so any file name works (torch prefers .pt2)
    torch.export.save(program, buffer)
    Path(out).write_bytes(buffer.getvalue())
    return program


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m automl_factor.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-id", required=True, help="the MLflow run of a trial (a child run of a search)")
    parser.add_argument("--out", required=True, help="file to write (torch.export format; .pt2 is torch's own suffix)")
    parser.add_argument("--mlflow-uri", default="sqlite:///mlflow.db")
    args = parser.parse_args(argv)

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from .factorization import count_params
    from .train import latency_ms

    if not Path(args.out).resolve().parent.is_dir():
        fail(f"--out {args.out!r}: folder {str(Path(args.out).resolve().parent)!r} does not exist")
    if args.mlflow_uri.startswith("sqlite:///") and not Path(args.mlflow_uri[len("sqlite:///"):]).is_file():
        fail(f"--run-id {args.run_id!r} not found: there is no MLflow store at {args.mlflow_uri!r}")
    try:
        run = MlflowClient(args.mlflow_uri).get_run(args.run_id)
    except MlflowException as error:
        fail(f"--run-id {args.run_id!r} not found in {args.mlflow_uri}: {str(error).splitlines()[0]}")
    checkpoint = run.data.tags.get("checkpoint")
    if not checkpoint:
        fail(f"--run-id {args.run_id!r} is not a finished trial with a checkpoint (status "
             f"{run.data.tags.get('status', 'unknown')!r})")
    model, info = load_trial_model(checkpoint)
    export_program(model, info, args.out)
    metrics = run.data.metrics
    params = count_params(model)
    latency = latency_ms(model, (1, *info["image_shape"]))
    print(f"wrote {args.out}: {params:,} params ({metrics.get('params_ratio', float('nan')):.4f} of dense), "
          f"latency {latency:.3f} ms (batch 1, 1 thread)")
    print(f"logged accuracy: validation {metrics.get('accuracy', float('nan')):.4f}, "
          f"test {metrics.get('test_accuracy', float('nan')):.4f}; status {run.data.tags.get('status')}")
    print(f"load it with: torch.export.load({args.out!r}).module()(images)  # images in [0, 1], "
          f"shape (N, {', '.join(map(str, info['image_shape']))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
