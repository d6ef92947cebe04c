"""The machine and software a run call ran on, kept beside its results (``env.jsonl``, one line per call).

The same seed gives the same result on the same machine and build; on another CPU model or library build the
floating-point kernels may differ in their last bits, and long chains of optimisation steps (task recovery, the
spectral clustering of a near-flat W) can carry such differences into visibly different results. The line lets a
reader tell those cases apart.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dfmeta


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_revision() -> str:
    """The git commit of dfmeta's source (``+dirty`` with uncommitted changes), or "" outside a git checkout."""
    root = Path(dfmeta.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return ""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=normal", "dfmeta"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    if head.returncode:
        return ""
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Versions, CPU, threads and, for a CUDA ``device``, the GPU of this process."""
    env: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dfmeta": dfmeta.__version__, "revision": source_revision(),
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "os": f"{platform.system()} {platform.release()}", "cpu": cpu_model(), "cpu_count": _cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }
    device = torch.device(device)
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        env.update(gpu=torch.cuda.get_device_name(idx), gpu_count=torch.cuda.device_count(),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def _cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def describe(env: dict[str, Any]) -> tuple[str, str, str]:
    """(machine, software, source) of one ``env.jsonl`` line, for tables."""
    machine = f"{env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores, {env.get('cpu_capability', '?')})"
    if env.get("gpu"):
        machine = f"{env['gpu']}; {machine}"
    software = f"torch {env.get('torch', '?')}, Python {env.get('python', '?')}"
    if env.get("cuda"):
        software += f", CUDA {env['cuda']}"
    source = f"dfmeta {env.get('dfmeta', '?')}" + (f" @ {env['revision']}" if env.get("revision") else "")
    return machine, software, source


__all__ = ["cpu_model", "describe", "environment", "source_revision"]
