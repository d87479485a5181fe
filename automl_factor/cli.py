"""Command-line plumbing shared by the entry points: one-line errors with exit code 2."""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

__all__ = ["UsageError", "Parser", "fail"]


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2."""


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), so every bad input looks the same."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see --help)")
