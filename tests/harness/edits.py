"""Test helper: a copy of a sample document with some keys replaced or deleted."""

from __future__ import annotations

import copy
from typing import Any


def edited(
    sample: dict[str, Any], changes: dict[str, Any], *, within: str | None = None
) -> dict[str, Any]:
    """A deep copy of `sample` with `changes` applied (a value of None deletes
    the key), at the top level or inside the object `within`."""
    data = copy.deepcopy(sample)
    target = data[within] if within else data
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return data
