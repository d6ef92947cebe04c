"""CLI commands: each module defines ``COMMANDS`` (see :mod:`dfmeta.cli`)."""
