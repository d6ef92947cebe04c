"""The ``dfmeta`` command line, generated from the config dataclasses of ``dfmeta.commands``.

Each module in ``dfmeta/commands/`` defines ``COMMANDS``: a list of :class:`Command` (name, config class, run
function, optional presets). Names with a space (``zoo build``) become nested subcommands.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from dfmeta.config import add_arguments, from_namespace
from dfmeta.errors import DfmetaError
from dfmeta.memory import keep_freed_memory


@dataclass(frozen=True)
class Command:
    """One CLI command: ``run(config)`` gets a ``config_cls`` built from flags (over an optional preset)."""

    name: str
    help: str
    config_cls: type
    run: Callable[[Any], Any]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    positional: str = ""
    """A tuple field also given as positional arguments (``dfmeta report RUN_DIR...``), besides its ``--flag``."""
    on_interrupt: str = ""
    """How an interrupted call continues, where the command does not print it itself (``--resume RUN``, ...)."""


def discover() -> list[Command]:
    """All commands of the modules in ``dfmeta.commands``."""
    import dfmeta.commands as pkg
    found: list[Command] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"dfmeta.commands.{info.name}")
        found.extend(getattr(mod, "COMMANDS", []))
    return found


def build_parser(commands: list[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfmeta", description=(
        "Data-free meta-learning from a zoo of pre-trained classifiers: TGR (ICML 2024), its baselines and tools."))
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in commands:
        words = cmd.name.split()
        sub = top
        for i, w in enumerate(words[:-1]):
            key = " ".join(words[: i + 1])
            if key not in groups:
                gp = sub.add_parser(w, help=f"{w} commands")
                groups[key] = gp.add_subparsers(dest=f"_{key}", metavar="SUBCOMMAND", required=True)
            sub = groups[key]
        p = sub.add_parser(words[-1], help=cmd.help.replace("%", "%%"), description=cmd.help, allow_abbrev=False)
        add_arguments(p, cmd.config_cls)
        if cmd.positional:
            p.add_argument(cmd.positional, nargs="*", default=argparse.SUPPRESS, metavar=cmd.positional.upper(),
                           help=f"the same as --{cmd.positional.replace('_', '-')}")
        if cmd.presets:
            p.add_argument("--preset", choices=sorted(cmd.presets), default=None, nargs="+", metavar="PRESET",
                           help="start from named presets, applied in order (a setting, then ablations); explicit "
                                "flags override them. Presets: " + ", ".join(sorted(cmd.presets)))
        p.set_defaults(_cmd=cmd, _parser=p)
    return parser


def unknown_flags(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """The error for arguments a command does not take, with the closest flag of that command for each."""
    import difflib
    flags = [o for a in parser._actions for o in a.option_strings]
    hints = [f"{x} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(x.split("=")[0], flags, 1)) else x
             for x in extra]
    return "unrecognized arguments: " + " ".join(hints)


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
    commands = discover()
    parser = build_parser(commands)
    ns, extra = parser.parse_known_args(argv)
    if extra:  # named by the command's own parser: its usage line, not the top level's
        ns._parser.error(unknown_flags(ns._parser, extra))
    cmd: Command = ns._cmd
    try:
        cfg = from_namespace(cmd.config_cls, ns, combined_presets(cmd, getattr(ns, "preset", None) or []))
        result = cmd.run(cfg)
    except DfmetaError as e:
        print(f"dfmeta {cmd.name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # a command continued by a flag (train --resume RUN, ...) has printed that line
        print(f"\ndfmeta {cmd.name}: interrupted{'; ' + cmd.on_interrupt if cmd.on_interrupt else ''}",
              file=sys.stderr)
        return 130
    except OSError as e:  # a path the user gave that cannot be made, read or written (/proc/x, a full disk, ...)
        if e.filename is None and e.errno is None:
            raise
        print(f"dfmeta {cmd.name}: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        print(f"dfmeta {cmd.name}: error: out of memory ({str(e).splitlines()[0][:160]}); lower the sizes of this "
              "call (--meta-batch or --first-order, --episode-batch, --episodes, --teachers-at-once, --image-size, "
              "--rec-per-class) or use a machine with more memory", file=sys.stderr)
        return 2
    return int(result) if isinstance(result, int) else 0


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says memory ran out (host or GPU)."""
    if isinstance(e, MemoryError):  # numpy's _ArrayMemoryError is one
        return True
    text = str(e)
    return "out of memory" in text.lower() or "can't allocate memory" in text or "failed to allocate" in text.lower()


def combined_presets(cmd: "Command", names: list[str]) -> dict[str, Any]:
    """The fields of the presets ``names`` together; two that set one field to different values are refused."""
    out: dict[str, Any] = {}
    by: dict[str, str] = {}
    for name in names:
        for k, v in cmd.presets[name].items():
            if k in out and out[k] != v:
                raise DfmetaError(f"--preset {by[k]} {name}: both set {k} ({out[k]!r} against {v!r}); keep one")
            out[k], by[k] = v, name
    return out


if __name__ == "__main__":
    sys.exit(main())
