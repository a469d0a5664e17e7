"""One rule for every name a user gives (datasets, policies, devices, groups, models, API keys).

1-128 characters from letters, digits, '.', '_' and '-', starting with a letter or digit: safe in object
keys, URLs, file names and every database, and free of control characters (a NUL byte included).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

from facefleet.platform.errors import InvalidInputError

NAME_MAX_LENGTH = 128
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NAME_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"

Name = Annotated[
    str, Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN, description=NAME_RULE)
]
# Free text shown to people (a run's display name): any characters but control characters, 128 at most.
Label = Annotated[str, Field(max_length=NAME_MAX_LENGTH, pattern=r"^[^\x00-\x1f\x7f]*$")]


def name_problem(value: object) -> str | None:
    """Why ``value`` is not an allowed name, or None when it is one."""
    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value):
        return f"use {NAME_RULE}"
    return None


def check_name(value: str, *, what: str, field: str = "name") -> str:
    """``value`` unchanged when it is an allowed name, else InvalidInputError naming the field."""
    problem = name_problem(value)
    if problem is not None:
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise InvalidInputError(f"{what} name {shown!r} is not allowed: {problem}", field=field)
    return value
