"""The daemon's state database: a real SQLite file, its schema version, its mode, and
concurrent writers kept consistent by the one writer."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
import trio

from cws_actors._host._state import StateStore

from ._fixtures import code_for, write_plugin
from .test_host import TIMEOUT, opened


async def test_a_new_database_is_private_wal_and_at_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(TIMEOUT):
        store = await StateStore.open(path)
        try:
            assert await store.schema_version() == 4
        finally:
            await store.aclose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE cws_schema (version INTEGER NOT NULL)")
        connection.execute("INSERT INTO cws_schema VALUES (7)")
    before = path.read_bytes()
    with trio.fail_after(TIMEOUT), pytest.raises(RuntimeError, match="schema version 7, newer"):
        await StateStore.open(path)
    assert path.read_bytes() == before


async def test_an_older_database_is_migrated_forward(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as connection:  # a database from before any migration
        connection.execute("CREATE TABLE cws_schema (version INTEGER NOT NULL)")
    with trio.fail_after(TIMEOUT):
        store = await StateStore.open(path)
        try:
            assert await store.schema_version() == 4
            await store.set_enabled("echo", False)
            assert not (await store.plugins())["echo"].enabled
        finally:
            await store.aclose()


async def test_concurrent_writers_stay_consistent(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        store = await StateStore.open(tmp_path / "state.db")
        try:

            async def flip(name: str) -> None:
                for index in range(20):
                    await store.set_enabled(name, index % 2 == 1)
                    await store.log(name, "note", str(index))

            async with trio.open_nursery() as nursery:
                for number in range(10):
                    nursery.start_soon(flip, f"p{number}")
            records = await store.plugins()
            assert sorted(records) == [f"p{n}" for n in range(10)]
            assert all(record.enabled for record in records.values())  # the last write won
            history = await store.history("p3", limit=1000)
            assert [e.detail for e in history if e.event == "note"] == [str(i) for i in range(20)]
        finally:
            await store.aclose()


async def test_concurrent_installs_and_flags_through_the_host(tmp_path: Path) -> None:
    home = tmp_path / "home"
    sources = [write_plugin(tmp_path / "src", f"p{n}", code=code_for(f"p{n}")) for n in range(6)]
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            async with trio.open_nursery() as nursery:
                for source in sources:
                    nursery.start_soon(host.install, source)
            assert sorted(p.name for p in await host.discover()) == [f"p{n}" for n in range(6)]

            async def cycle(name: str) -> None:
                await host.enable(name)
                await host.disable(name)
                await host.enable(name)

            async with trio.open_nursery() as nursery:
                for n in range(6):
                    nursery.start_soon(cycle, f"p{n}")
            statuses = await host.statuses()
            assert [(s.name, s.enabled, s.state) for s in statuses] == [
                (f"p{n}", True, "running") for n in range(6)
            ]


async def test_a_version_3_database_gains_grants_and_keeps_its_plugins(tmp_path: Path) -> None:
    from cws_actors._host._state import _MIGRATIONS

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as connection:  # as cws-actors with schema 3 left it
        for script in _MIGRATIONS[:3]:
            connection.executescript(script)
        connection.execute("CREATE TABLE cws_schema (version INTEGER NOT NULL)")
        connection.execute("INSERT INTO cws_schema VALUES (3)")
        connection.execute(
            "INSERT INTO plugins (name, version, source, installed_at) VALUES"
            " ('old', '1.0', 'user', 0)"
        )
    with trio.fail_after(TIMEOUT):
        store = await StateStore.open(path)
        try:
            assert await store.schema_version() == 4
            assert set(await store.plugins()) == {"old"}
            assert await store.grants("old") == ()
            await store.set_grants("old", ["network:*:443", "secrets:k"], "test")
            await store.set_grants("old", ["network:*:443"], "test")
            assert await store.grants("old") == ("network:*:443",)
            events = [(e.event, e.detail) for e in await store.history("old")]
            assert events == [
                ("granted", "test: network:*:443, secrets:k"), ("revoked", "test: secrets:k")
            ]  # fmt: skip
            await store.forget("old")
            assert await store.grants("old") == ()
        finally:
            await store.aclose()
