"""Configs -> CLI: field docstrings as help, presets, unknown fields, and one-line errors without a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

import pytest

from dfmeta.cli import Command, build_parser, main
from dfmeta.config import add_arguments, field_docs, from_namespace, make, replace, to_dict
from dfmeta.errors import DfmetaError


@dataclass(frozen=True)
class Base:
    lr: float = 0.1
    """Step size of the   inner
    loop (%)."""


@dataclass(frozen=True)
class Toy(Base):
    """A toy config."""

    name: str = "a"
    """The name."""
    mode: Literal["x", "y"] = "x"
    """The mode."""
    shots: tuple[int, ...] = (1, 5)
    """Shots."""
    flag: bool = False
    limit: int | None = None
    """Optional limit."""

    def validate(self) -> None:
        if self.lr <= 0:
            raise DfmetaError(f"field 'lr': expected > 0, got {self.lr}")


def test_field_docstrings_become_help() -> None:
    assert field_docs(Toy) == {"lr": "Step size of the inner loop (%).", "name": "The name.", "mode": "The mode.",
                               "shots": "Shots.", "limit": "Optional limit."}
    p = argparse.ArgumentParser()
    add_arguments(p, Toy)
    text = " ".join(p.format_help().split())
    assert "--lr LR Step size of the inner loop (%). (default: 0.1)" in text
    assert "--mode {x,y} The mode. (default: 'x')" in text and "--flag, --no-flag (default: False)" in text


def test_flags_override_preset_over_defaults() -> None:
    p = argparse.ArgumentParser()
    add_arguments(p, Toy)
    ns = p.parse_args(["--shots", "2", "3", "--flag", "--limit", "none", "--mode", "y"])
    cfg = from_namespace(Toy, ns, {"name": "preset", "mode": "x", "lr": 0.5})
    assert cfg == Toy(lr=0.5, name="preset", mode="y", shots=(2, 3), flag=True, limit=None)
    assert to_dict(cfg)["shots"] == [2, 3] and make(Toy, to_dict(cfg)) == cfg  # JSON round trip
    assert replace(cfg, lr=0.25).lr == 0.25


def test_unknown_field_and_bad_values() -> None:
    with pytest.raises(DfmetaError, match="unknown field\\(s\\) for Toy: bogus; expected one of: flag, limit, lr"):
        make(Toy, {"bogus": 1})
    with pytest.raises(DfmetaError, match="field 'mode': expected one of \\['x', 'y'\\], got 'z'"):
        make(Toy, {"mode": "z"})
    with pytest.raises(DfmetaError, match="field 'lr': expected > 0"):
        replace(Toy(), lr=-1.0)


def test_unknown_preset_is_a_usage_error(capsys) -> None:
    cmd = Command("toy", "A toy command.", Toy, lambda cfg: 0, presets={"fast": {"lr": 1.0}})
    parser = build_parser([cmd])
    assert parser.parse_args(["toy", "--preset", "fast"])._cmd is cmd
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["toy", "--preset", "nope"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_cli_unknown_dataset_in_process(capsys) -> None:
    assert main(["evaluate", "--dataset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("dfmeta evaluate: error: field 'dataset': unknown dataset 'nope'; expected one of:")
    assert "omniglot" in err and "miniimagenet" in err and "cub" in err


def test_cli_evaluate_help_uses_docstrings(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--help"])
    assert e.value.code == 0
    assert "Dataset name" in " ".join(capsys.readouterr().out.split())


def test_cli_subprocess_one_line_error() -> None:
    r = subprocess.run([sys.executable, "-m", "dfmeta.cli", "evaluate", "--dataset", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "unknown dataset 'nope'" in r.stderr


def test_a_misspelt_flag_is_refused_not_guessed(capsys):
    from dfmeta.cli import main
    with pytest.raises(SystemExit) as e:
        main(["train", "--zoo", "z", "--epoch", "3"])  # --epochs abbreviated: must not silently match
    assert e.value.code == 2 and "--epoch" in capsys.readouterr().err


def test_an_unknown_flag_is_named_by_its_command_with_the_closest_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--epsiodes", "5"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage: dfmeta evaluate" in err
    assert "dfmeta evaluate: error: unrecognized arguments: --epsiodes (did you mean --episodes?) 5" in err


def test_help_texts_carry_no_docstring_markup() -> None:
    """Field docstrings use Sphinx roles and literals; --help shows them as plain text, for every command."""
    from dfmeta.cli import discover
    parser = build_parser(discover())
    for cmd in discover():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for word in cmd.name.split():
            p = sub.choices[word]
            sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        text = p.format_help()
        assert "``" not in text and ":func:`" not in text and ":mod:`" not in text and ":class:`" not in text, cmd.name


def test_every_documented_command_exists() -> None:
    """The README's command list and the CLI agree (a command module losing its COMMANDS is caught here)."""
    from pathlib import Path

    from dfmeta.cli import discover
    names = {c.name for c in discover()}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Command line", 1)[1].split("```", 2)[1]
    documented = set()
    for line in block.splitlines():
        words = line.split()
        if words and words[0] == "dfmeta":
            two = " ".join(words[1:3])
            documented.add(two if two in names else words[1])
    assert documented == names


@pytest.mark.parametrize("argv", [["train", "--zoo", "z"], ["evaluate"], ["baseline", "purer", "--zoo", "z"],
                                  ["group", "--zoo", "z"]])
def test_negative_threads_is_refused_before_any_work(argv, capsys) -> None:
    assert main([*argv, "--threads", "-1"]) == 2  # was taken silently as torch's default (and a run started)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'threads': must be non-negative" in err and "got -1" in err
