"""Everything a search checks before it writes anything: options, tracking store, cluster address,
the space, the data and the budget. Imports neither MLflow nor (but for Ray's address lookup) Ray,
so bad input fails fast."""
from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..cli import UsageError
from .options import SearchOptions
from .saved import STATE_FILE

__all__ = ["Prepared", "prepare", "DEFAULT_SPACE", "resolve_space", "check_mlflow_uri", "check_address",
           "check_storage"]

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
DEFAULT_SPACE = SPACES / "default.yaml"


def resolve_space(space: str | None) -> Path:
    """A space file: the path given, else that name in search_spaces/ (with or without .yaml)."""
    if space is None:
        return DEFAULT_SPACE
    path = Path(space)
    if path.is_file():
        return path
    for candidate in (SPACES / space, SPACES / f"{space}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in SPACES.glob("*.yaml")))
    raise UsageError(f"--space {space!r} does not exist as a file or as a shipped space; shipped: {shipped}")


def check_mlflow_uri(uri: str) -> None:
    """Fail early (exit 2) when the tracking store cannot be reached."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
        except (urllib.error.URLError, OSError) as error:
            raise UsageError(f"--mlflow-uri {uri!r} is unreachable ({getattr(error, 'reason', error)}); "
                             f"start a server or use sqlite:///PATH or a folder")
    elif parsed.scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise UsageError(f"--mlflow-uri {uri!r}: folder {str(folder)!r} does not exist")
    elif parsed.scheme not in ("", "file", "databricks", "postgresql", "mysql", "mssql"):
        raise UsageError(f"--mlflow-uri {uri!r}: unsupported scheme {parsed.scheme!r}; "
                         f"use http(s)://, sqlite:///, file: or a folder")


def check_storage(storage: str, name: str | None) -> None:
    """Fail early when the search's folder cannot be made: the storage path, or the folder for --name in
    it, is a file or lies under one, or this user cannot write there. Missing folders are fine (made
    later); object stores are checked when first written."""
    if "://" in storage and not storage.startswith("file://"):
        return
    path = Path(urlparse(storage).path if storage.startswith("file://") else storage).expanduser()
    target = path / name if name else path
    existing = next(folder for folder in (target, *target.parents) if folder.exists())
    if not existing.is_dir():
        raise UsageError(f"--storage-path {storage!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--storage-path {storage!r}: cannot write in {str(existing)!r} (permission denied)")


def check_address(address: str | None) -> None:
    """Fail early, in seconds, when the Ray cluster to join is not there: 'auto' (or RAY_ADDRESS) finds
    none, or its host:port does not listen, or answers HTTP (the dashboard's port, where ray.init hangs
    for minutes). None: Ray's own choice (RAY_ADDRESS, a `ray start` cluster, else a local runtime)."""
    flag = f"--address {address!r}"
    if address in (None, "auto"):
        # Ray's own lookup (RAY_ADDRESS, the file `ray start` leaves, and for 'auto' a Ray process on
        # this machine): it reads the environment, a file and the process list, and starts nothing.
        from ray._common.utils import get_ray_address_file
        from ray._private.services import get_ray_address_from_environment

        try:
            found = get_ray_address_from_environment(address, None)
        except ConnectionError:
            raise UsageError(f"{flag}: no running Ray cluster found (RAY_ADDRESS is unset, no "
                             f"{get_ray_address_file(None)} from `ray start`, no Ray process on this machine); "
                             f"start one with `ray start --head`, or leave out --address for a local runtime") from None
        source = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "found"
        flag, address = f"--address {address or 'unset'!r} ({source} {found!r})", found
    if address in (None, "local"):
        return
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address must look like host:port, ray://host:port or 'auto', got {address!r}")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
    except OSError as error:
        raise UsageError(f"{flag} is unreachable ({error.strerror or error}); is the Ray head running?") from None
    with sock:  # a gRPC port (the GCS, the Ray client server) never answers "HTTP/": it waits for HTTP/2
        try:
            sock.settimeout(3)
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            reply = sock.recv(16)
        except OSError:
            reply = b""
    if reply.startswith(b"HTTP/"):
        raise UsageError(f"{flag} answers HTTP; that is not the Ray head's GCS port "
                         f"(usually 6379; the dashboard is 8265)")


@dataclass
class Prepared:
    """Everything validated before anything is written or started."""

    options: SearchOptions
    space: object
    space_text: str
    data: object
    dense_params: int
    name: str
    run_uri: str


def prepare(options: SearchOptions) -> Prepared:
    """Validate input, load the data and check the budget can be met; writes nothing.
    Bad input raises ``UsageError`` (the command line prints it as one line, exit 2)."""
    from ..factorization import count_params
    from ..train import build_model, load, load_weights
    from .space import group_layers, load_space, minimum_params

    check_storage(options.storage_path, options.name)
    if options.resume:  # the saved settings, and nothing else, continue the search
        from .saved import resumed_options
        name, run_uri = _run_location(options)
        options = resumed_options(options, run_uri, name)
    space_path = resolve_space(options.space)
    check_mlflow_uri(options.mlflow_uri)
    check_address(options.address)
    try:
        space = load_space(space_path)
        if options.max_epochs is not None:
            space = space.model_copy(update={"max_epochs": options.max_epochs})
        if options.compile is not None:
            space = space.model_copy(update={"recipe": space.recipe.model_copy(update={"compile": options.compile})})
        data = load(space.data.name, root=space.data.root, val_fraction=space.data.val_fraction,
                    train_subset=space.data.train_subset, test_subset=space.data.test_subset,
                    download=space.data.download, seed=options.seed)
        dense = build_model(space.model, data, **space.model_kwargs)
        if space.weights is not None:  # checked now, and made absolute: trials run in other folders
            weights = str(Path(space.weights).expanduser().resolve())
            load_weights(dense, weights)
            space = space.model_copy(update={"weights": weights})
        group_layers(space, dense)
        smallest, budget = minimum_params(space, dense), options.budget_fraction * count_params(dense)
        if smallest > budget:
            raise UsageError(f"--budget-params {options.budget_fraction:g} is too small for {space.model}: "
                             f"{budget:,.0f} parameters, but the layers left dense plus rank 1 everywhere need "
                             f"{smallest:,} ({smallest / count_params(dense):.4f} of dense)")
    except UsageError:
        raise
    except ValueError as error:
        raise UsageError(str(error)) from None
    name, run_uri = _run_location(options)
    return Prepared(options, space, space_path.read_text(), data, count_params(dense), name, run_uri)


def _run_location(options) -> tuple[str, str]:
    storage = options.storage_path
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    if options.resume and not options.name:
        import pyarrow.fs as pafs
        filesystem, path = pafs.FileSystem.from_uri(storage if "://" in storage else Path(storage).as_uri())
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        folders = [info for info in infos if info.type == pafs.FileType.Directory]
        saved = filesystem.get_file_info([f"{info.path}/{STATE_FILE}" for info in folders])
        names = sorted(info.base_name for info, state in zip(folders, saved) if state.type == pafs.FileType.File)
        if not names:
            raise UsageError(f"--resume: no search to resume under {options.storage_path!r}")
        return names[-1], f"{storage.rstrip('/')}/{names[-1]}"
    name = options.name or time.strftime("search-%Y%m%d-%H%M%S")
    return name, f"{storage.rstrip('/')}/{name}"


