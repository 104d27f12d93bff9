"""Which events a sink takes: its `types` and `accounts` patterns, and `Route`.

A pattern is a glob: `*` stands for any run of characters, `?` for one, every
other character for itself. The characters are restricted (lower-case letters,
digits, `.` `_` `-`; no `[...]` classes, no escapes) so that Python's
`fnmatch.fnmatchcase` (the dispatcher, on events in memory) and SQLite's
`GLOB` (the store, on the outbox) always agree on what a pattern matches.

A `types` pattern that can match no event type is an error: every type is
`gws.` followed by lower-case names separated by single dots
(`gws.email.state_changed`, `gws.notification`).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from daemon.config.reader import Table
from daemon.errors import ConfigError

TYPE_PREFIX = "gws."
ACCOUNT_MAX_LENGTH = 64
_WILDCARDS = "*?"
_NAME_CHARS = string.ascii_lowercase + string.digits + "_-"  # one part of a type, an account
_TYPE_CHARS = frozenset(_NAME_CHARS + "." + _WILDCARDS)
_ACCOUNT_CHARS = frozenset(_NAME_CHARS + _WILDCARDS)
# `Route.takes` remembers this many (type, account) answers; the set is small
# (a few types times the configured accounts), the bound is against surprises.
_CACHED_ANSWERS = 4096


def route_fields(table: Table) -> dict[str, Any]:
    """A sink's `types` and `accounts` (absent: every event)."""
    return {
        "types": _patterns(table, "types", _type_problem),
        "accounts": _patterns(table, "accounts", _account_problem),
    }


def _patterns(table: Table, name: str, problem: Callable[[str], str | None]) -> tuple[str, ...]:
    patterns = table.string_list(name, ())
    for index, pattern in enumerate(patterns):
        reason = problem(pattern)
        if reason:
            raise ConfigError(f"{table.key(name)}[{index}]", reason)
    return patterns


def _type_problem(pattern: str) -> str | None:
    bad = _bad_character(pattern, _TYPE_CHARS)
    if bad:
        return (
            f'"{pattern}" has "{bad}": use a-z, 0-9, ".", "_", "-" and the wildcards * and ? '
            "only (no [...] classes, so that the daemon and the store match alike)"
        )
    if not _matches_some(pattern, _prefix_step, accepting=len(TYPE_PREFIX)):
        return f'"{pattern}" can never match an event type: every type begins with "{TYPE_PREFIX}"'
    if not _matches_some(pattern, _type_step, accepting=_IN_NAME):
        return (
            f'"{pattern}" can never match an event type: types are lower-case names '
            'separated by single dots, e.g. "gws.email.state_changed"'
        )
    return None


def _account_problem(pattern: str) -> str | None:
    bad = _bad_character(pattern, _ACCOUNT_CHARS)
    if bad:
        return (
            f'"{pattern}" has "{bad}": use a-z, 0-9, "_", "-" and the wildcards * and ? only '
            "(no [...] classes, so that the daemon and the store match alike)"
        )
    if len(pattern.replace("*", "")) > ACCOUNT_MAX_LENGTH:
        return (
            f'"{pattern}" can never match an account: '
            f"account names have at most {ACCOUNT_MAX_LENGTH} characters"
        )
    return None


def _bad_character(pattern: str, allowed: frozenset[str]) -> str | None:
    return next((c for c in pattern if c not in allowed), None)


# -- can a pattern match an event type at all? --------------------------------------
#
# The types form a regular language; a small automaton reads it. A pattern can
# match a type when, fed to the automaton (`?` as any one character, `*` as any
# run), it can end in an accepting state.

_DEAD = -1
_IN_NAME = len(TYPE_PREFIX) + 1  # 0-3: part of "gws." read; 4: a name must start; 5: in a name


def _type_step(state: int, char: str) -> int:
    """The automaton of `gws(.NAME)+`, NAME = [a-z0-9_-]+."""
    if state < len(TYPE_PREFIX):
        return state + 1 if char == TYPE_PREFIX[state] else _DEAD
    if char in _NAME_CHARS:
        return _IN_NAME
    if char == "." and state == _IN_NAME:
        return len(TYPE_PREFIX)
    return _DEAD


def _prefix_step(state: int, char: str) -> int:
    """Only the prefix: once "gws." is read, anything may follow."""
    if state == len(TYPE_PREFIX):
        return state
    return state + 1 if char == TYPE_PREFIX[state] else _DEAD


_Step = Callable[[int, str], int]
_ALPHABET = _TYPE_CHARS - set(_WILDCARDS)


def _matches_some(pattern: str, step: _Step, *, accepting: int) -> bool:
    states = {0}
    for char in pattern:
        if char == "*":
            states = _reachable(states, step)
        elif char == "?":
            states = {step(s, c) for s in states for c in _ALPHABET}
        else:
            states = {step(s, char) for s in states}
        states.discard(_DEAD)
        if not states:
            return False
    return accepting in states


def _reachable(states: set[int], step: _Step) -> set[int]:
    """Every state reached from `states` by reading any run of characters."""
    reached, todo = set(states), list(states)
    while todo:
        state = todo.pop()
        for char in _ALPHABET:
            following = step(state, char)
            if following != _DEAD and following not in reached:
                reached.add(following)
                todo.append(following)
    return reached


# -- the route itself ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """The events a sink takes: a type matching one of `types` and an account
    matching one of `accounts` (an empty tuple matches everything)."""

    types: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    _answers: dict[tuple[str, str], bool] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def of(cls, types: tuple[str, ...], accounts: tuple[str, ...]) -> Route | None:
        """The route of a sink with these keys; None when it takes every event."""
        return cls(types, accounts) if types or accounts else None

    def takes(self, type_: str, account: str) -> bool:
        key = (type_, account)
        answer = self._answers.get(key)
        if answer is None:
            if len(self._answers) >= _CACHED_ANSWERS:
                self._answers.clear()
            answer = self._answers[key] = _any_match(self.types, type_) and _any_match(
                self.accounts, account
            )
        return answer


def _any_match(patterns: tuple[str, ...], value: str) -> bool:
    return not patterns or any(fnmatchcase(value, p) for p in patterns)
