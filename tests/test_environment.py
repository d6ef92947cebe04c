"""The machine and software record of a run call (dfmeta.environment) and the report's Machines section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

import dfmeta
from dfmeta.environment import describe, environment, source_revision
from dfmeta.report import build_report


def test_environment_names_versions_cpu_and_no_gpu_for_a_cpu_call():
    env = environment("cpu")
    assert json.loads(json.dumps(env)) == env
    assert env["torch"] == torch.__version__ and env["dfmeta"] == dfmeta.__version__
    assert env["cpu"] and env["cpu_count"] >= 1 and env["torch_threads"] == torch.get_num_threads()
    assert "gpu" not in env and "cuda" not in env
    machine, software, source = describe(env)
    assert env["cpu"] in machine and f"torch {torch.__version__}" in software and source.startswith("dfmeta ")


def test_source_revision_is_the_checkout_commit_or_empty():
    rev = source_revision()
    if (Path(dfmeta.__file__).resolve().parent.parent / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{12}(\+dirty)?", rev), rev
    else:
        assert rev == ""


def test_describe_shows_the_gpu_first():
    env = {"cpu": "Some CPU", "cpu_count": 16, "cpu_capability": "AVX2", "gpu": "NVIDIA H100", "torch": "2.11",
           "python": "3.12", "cuda": "13.0", "dfmeta": "0.1.0", "revision": "abc"}
    assert describe(env) == ("NVIDIA H100; Some CPU (16 cores, AVX2)", "torch 2.11, Python 3.12, CUDA 13.0",
                             "dfmeta 0.1.0 @ abc")


def _record(folder: Path, name: str, envs: list[dict]) -> None:
    config = {"dataset": "embedded", "val_every": 1, "epochs": 1, "seed": 0, "method": "tgr"}
    (folder / f"{name}_config.json").write_text(json.dumps(config))
    (folder / f"{name}_results.json").write_text(json.dumps({"method": "tgr", "dataset": "embedded", "epochs_run": 1,
                                                             "test": {"1": {"acc": 40.0, "ci95": 1.0}}}))
    if envs:
        (folder / f"{name}_env.jsonl").write_text("".join(json.dumps(e) + "\n" for e in envs))


def test_report_lists_each_machine_with_its_runs_and_calls(tmp_path):
    box = {"cpu": "Box CPU", "cpu_count": 2, "cpu_capability": "AVX512", "torch": "2.13.0+cpu", "python": "3.11",
           "dfmeta": "0.1.0", "revision": "r1"}
    gpu = {**box, "cpu": "Host CPU", "cpu_count": 16, "gpu": "NVIDIA H100", "cuda": "13.0", "torch": "2.11"}
    _record(tmp_path, "a", [box, box])
    _record(tmp_path, "b", [box, gpu])
    _record(tmp_path, "old", [])
    text = build_report([str(tmp_path)])
    section = text.split("## Machines", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "machine" not in line]
    assert rows == ["| Box CPU (2 cores, AVX512) | torch 2.13.0+cpu, Python 3.11 | dfmeta 0.1.0 @ r1 | "
                    "`a` (2 calls), `b` |",
                    "| NVIDIA H100; Host CPU (16 cores, AVX512) | torch 2.11, Python 3.11, CUDA 13.0 | "
                    "dfmeta 0.1.0 @ r1 | `b` |"]
    assert "Not recorded (runs made before dfmeta kept `env.jsonl`): `old`." in section
    (tmp_path / "a_env.jsonl").unlink()
    (tmp_path / "b_env.jsonl").unlink()
    assert "## Machines" not in build_report([str(tmp_path)])  # no run recorded one: no section


def test_same_machine_of_two_runs():
    from dfmeta.report.collect import Run
    from dfmeta.report.machines import same_machine
    box, other = {"cpu": "A", "torch": "2.13"}, {"cpu": "B", "torch": "2.13"}

    def run(*envs: dict) -> Run:
        return Run(Path("r"), "train", {}, envs=list(envs))
    assert same_machine(run(box, box), run(box)) == "yes"
    assert same_machine(run(box), run(other)) == "no"
    assert same_machine(run(box, other), run(box, other)) == "no"  # calls on two machines: not one machine
    assert same_machine(run(box), run()) == "—"
