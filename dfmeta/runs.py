"""Run directories, atomic writes, metrics logging, seeding and device selection."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import shutil
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from dfmeta.config import to_dict
from dfmeta.errors import DfmetaError

try:
    import fcntl
except ImportError:  # not POSIX: run directories are not locked
    fcntl = None  # type: ignore[assignment]

LOCK = "lock"
"""The file a process holds (``flock``) while it writes into a run directory; readers ignore it."""
ZOO_RECORD = "zoo.json"
"""A run's zoo: its path at the start and each teacher's id and checksum (:func:`dfmeta.zoo.format.fingerprint`)."""
STARTED = {"config.json", "env.jsonl", LOCK, ZOO_RECORD}
"""The files starting a run writes: a run directory holding no more has no work in it."""


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def expect_directory(path: str | os.PathLike, flag: str) -> None:
    """Raise a one-line error when ``path`` (a directory to use or make, given as ``flag``) or a folder above it is a
    file: a mistake that would otherwise surface as FileExistsError or NotADirectoryError after the work."""
    if not str(path).strip():
        raise DfmetaError(f"{flag}: expected a directory, got an empty path")
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                found = "" if p == path else f" ({p})"
                raise DfmetaError(f"{flag} {path}: expected a directory, found a file{found}")
            return


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; one that is not valid JSON (e.g. cut short by a kill) or cannot be read is a one-line
    error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DfmetaError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise DfmetaError(f"{path}: cannot read ({e.strerror})") from None


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object ``{...}`` in ``path`` (:func:`read_json`); a one-line error where it holds something else."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DfmetaError(f"{path}: expected a JSON object {{...}}, found a {type(doc).__name__}")
    return doc


def is_torch_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a whole ``torch.save`` file (a zip archive with its directory at the end: a file
    cut short lacks it). Cheap: reads only the file's end."""
    return zipfile.is_zipfile(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads in torch (0 leaves torch's default)."""
    if n > 0:
        torch.set_num_threads(n)


_DEVICE = re.compile(r"(cpu|cuda|mps)(?::(\d+))?")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU. A device this machine lacks, or a name torch does not know, is a
    one-line :class:`DfmetaError` (configs call this in ``validate``: before any run or zoo directory is made)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = _DEVICE.fullmatch(name)
    if m is None:
        raise DfmetaError(f"field 'device': expected auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if m[1] == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DfmetaError(f"field 'device': {name} requested, but CUDA is not available ({why}); "
                              "use --device cpu or auto")
        n = torch.cuda.device_count()
        if m[2] is not None and int(m[2]) >= n:
            raise DfmetaError(f"field 'device': {name} requested, but this machine has {n} CUDA device(s) "
                              f"(cuda:0 to cuda:{n - 1})")
    if m[1] == "mps" and not torch.backends.mps.is_available():
        raise DfmetaError(f"field 'device': {name} requested, but MPS is not available; use --device cpu or auto")
    return torch.device(name)


class RunDir:
    """A run's directory: ``config.json`` (resolved config), ``metrics.jsonl`` and artefacts."""

    def __init__(self, path: str | os.PathLike, config: Any | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.made_root = False
        """Whether :meth:`new` made the parent folder (:meth:`discard_if_unused` then removes it too, if empty)."""
        if config is not None:
            self.write_config(config)

    @staticmethod
    def new(root: str | os.PathLike, dataset: str, method: str, seed: int, config: Any | None = None) -> "RunDir":
        """A fresh run directory named ``{dataset}__{method}__{seed}__{time}`` under ``root``, made by this call alone:
        where another run took the name (started in the same second), ``-2``, ``-3``, ... is appended."""
        root = Path(root)
        made_root = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        name = f"{dataset}__{method}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"
        for n in itertools.count(1):
            path = root / (name if n == 1 else f"{name}-{n}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        run = RunDir(path, config)
        run.made_root = made_root
        return run

    def write_config(self, config: Any) -> None:
        """Atomically write the resolved config as ``config.json``."""
        atomic_write(self.path / "config.json", json.dumps(to_dict(config), indent=2) + "\n")

    @contextmanager
    def locked(self) -> Iterator["RunDir"]:
        """Hold the run's ``lock`` file (``flock``, released on exit and when the process dies, a kill included)
        while writing into the run: a second process that would train or continue it fails at once."""
        with open(self.path / LOCK, "a") as fh:
            if fcntl is not None:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise DfmetaError(f"{self.path}: run in progress (another dfmeta process holds its lock)") from None
            yield self

    def discard_if_unused(self) -> bool:
        """Remove the run directory if it holds nothing but what starting it wrote (:data:`STARTED`), and the parent
        folder :meth:`new` made if that is then empty: a call that failed on bad input leaves nothing behind."""
        if not {f.name for f in self.path.iterdir()} <= STARTED:
            return False
        shutil.rmtree(self.path)
        if self.made_root and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()
        return True

    def log(self, **metrics: Any) -> None:
        """Append one JSON line to ``metrics.jsonl``."""
        self._append("metrics.jsonl", metrics)

    def record_environment(self, device: torch.device | str) -> None:
        """Append this call's machine and software (:func:`dfmeta.environment.environment`) to ``env.jsonl``."""
        from dfmeta.environment import environment
        self._append("env.jsonl", environment(device))

    def log_call(self, **settings: Any) -> None:
        """Append one JSON line to ``calls.jsonl`` (a call that continued the run: its epoch and settings)."""
        self._append("calls.jsonl", settings)

    def _append(self, name: str, row: dict[str, Any]) -> None:
        with open(self.path / name, "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """All logged metric lines."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def rewrite_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Atomically replace ``metrics.jsonl`` with ``rows``."""
        atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(m, default=float) + "\n" for m in rows))

    def write_json(self, name: str, obj: Any) -> None:
        """Atomically write ``name`` as JSON."""
        atomic_write(self.path / name, json.dumps(obj, indent=2, default=float) + "\n")
