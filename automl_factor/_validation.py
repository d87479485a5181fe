"""One-line messages for pydantic validation errors, the same wherever typed input is read."""
from __future__ import annotations

from pydantic import ValidationError

__all__ = ["first_problem"]


def first_problem(error: ValidationError, *, key_prefix: str = "") -> str:
    """``"<key>: <what is wrong> (got <value>)"`` for the first problem pydantic found."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    return f"{key_prefix}{key}: {message} (got {first.get('input')!r})"
