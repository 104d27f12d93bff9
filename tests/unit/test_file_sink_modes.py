"""The jsonl sink's file and the directories it makes are private, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from daemon.sinks.jsonl import JsonLinesSink


@pytest.fixture(params=[0o022, 0o002, 0o000])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask for the test (restored after)."""
    mask: int = request.param
    previous = os.umask(mask)
    yield mask
    os.umask(previous)


@pytest.fixture
async def sinks() -> AsyncIterator[list[JsonLinesSink]]:
    made: list[JsonLinesSink] = []
    yield made
    for sink in made:
        await sink.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_file_and_the_directories_made_for_it_are_0600_and_0700(
    tmp_path: Path, umask: int, sinks: list[JsonLinesSink]
) -> None:
    path = tmp_path / "made" / "for" / "events.jsonl"

    sinks.append(JsonLinesSink(name="archive", path=path))

    assert mode(path) == 0o600
    assert mode(tmp_path / "made") == 0o700
    assert mode(tmp_path / "made" / "for") == 0o700


async def test_a_directory_that_was_there_keeps_its_mode(
    tmp_path: Path, umask: int, sinks: list[JsonLinesSink]
) -> None:
    there = tmp_path / "there"
    there.mkdir()
    there.chmod(0o755)

    sinks.append(JsonLinesSink(name="archive", path=there / "events.jsonl"))

    assert mode(there) == 0o755
    assert mode(there / "events.jsonl") == 0o600
