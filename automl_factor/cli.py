"""Command-line plumbing shared by the entry points: one-line errors with exit code 2."""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

__all__ = ["UsageError", "Parser", "DefaultsFormatter", "fail"]


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2."""


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), so every bad input looks the same."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see --help)")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` that shows each option's default, unless its help already says it ("(default ...")
    or there is none worth showing (None: the help says what happens instead; False: a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("(default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"
