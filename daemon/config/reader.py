"""Reading one TOML table with types: `Table`.

Owns the checks every key shares (type, empty string, range, choice) and the
rule that a key nobody read is an error, so a typo never passes silently.
Knows nothing of which keys exist: that is `loader`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from daemon.errors import ConfigError

T = TypeVar("T")


class Table:
    """One TOML table being read: typed getters, and unknown keys reported at the end."""

    def __init__(self, data: Mapping[str, Any], prefix: str) -> None:
        self._data = data
        self._prefix = prefix
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def has(self, name: str) -> bool:
        return name in self._data

    def is_list(self, name: str) -> bool:
        """Whether the key holds a list (for keys that take one value or several)."""
        return isinstance(self._data.get(name), list)

    def _get(self, name: str, kind: type[T] | tuple[type, ...], kind_name: str) -> T | None:
        self._seen.add(name)
        if name not in self._data:
            return None
        value = self._data[name]
        # bool is an int in Python; TOML keeps them apart and so do we.
        if isinstance(value, bool) and kind is not bool:
            raise ConfigError(self.key(name), f"expected {kind_name}, got a boolean")
        if not isinstance(value, kind):
            raise ConfigError(self.key(name), f"expected {kind_name}, got {_toml_type(value)}")
        return value  # type: ignore[return-value]

    def string(self, name: str, default: str | None = None) -> str:
        """The string under `name`; required when there is no default."""
        value = self._get(name, str, "a string")
        if value is None:
            if default is None:
                raise ConfigError(self.key(name), "is required")
            return default
        if not value.strip():
            raise ConfigError(self.key(name), "must not be empty")
        return value

    def optional_string(self, name: str) -> str | None:
        value = self._get(name, str, "a string")
        if value is not None and not value.strip():
            raise ConfigError(self.key(name), "must not be empty")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, bool, "true or false")
        return default if value is None else value

    def number(
        self, name: str, default: float, *, minimum: float = 0.0, above: bool = False
    ) -> float:
        value = cast("float | None", self._get(name, (int, float), "a number"))
        if value is None:
            return default
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(self.key(name), "must be a finite number")
        if (above and number <= minimum) or number < minimum:
            relation = "greater than" if above else "at least"
            raise ConfigError(self.key(name), f"must be {relation} {minimum:g}, got {number:g}")
        return number

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        value = self._get(name, int, "an integer")
        if value is None:
            return default
        if value < minimum:
            raise ConfigError(self.key(name), f"must be at least {minimum}, got {value}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._get(name, str, "a string")
        if value is None:
            return default
        if value not in choices:
            raise ConfigError(self.key(name), f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def string_list(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(name, list, "a list of strings")
        if value is None:
            return default
        if not value:
            raise ConfigError(self.key(name), "must not be empty")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise ConfigError(f"{self.key(name)}[{index}]", "expected a non-empty string")
        return tuple(value)

    def table(self, name: str) -> Table:
        value = self._get(name, dict, "a table")
        return Table(value or {}, self.key(name))

    def tables(self, name: str) -> list[Table]:
        """An array of tables (`[[name]]`), each one read as `name[index]`."""
        self._seen.add(name)
        value = self._data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ConfigError(self.key(name), f"expected an array of tables ([[{self.key(name)}]])")
        return [Table(item, f"{self.key(name)}[{index}]") for index, item in enumerate(value)]

    def string_table(self, name: str) -> tuple[tuple[str, str], ...]:
        table = self._get(name, dict, "a table of strings")
        if table is None:
            return ()
        for key, value in table.items():
            if not isinstance(value, str):
                raise ConfigError(f"{self.key(name)}.{key}", "expected a string")
        return tuple(sorted(table.items()))

    def finish(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")


def _toml_type(value: object) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)
