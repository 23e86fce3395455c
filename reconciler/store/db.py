"""The SQLite base of every store (talks to SQLite): connect, transactions, errors, migrations.

- ``connect``: the file created 0600 (its directory 0700), WAL so that readers never wait
  for a writer, a bounded ``busy_timeout`` so that a lock is an error, never a hang.
- ``Database.transaction()``: one ``BEGIN IMMEDIATE`` (the write lock taken up front: no
  deadlock when a reader upgrades); nested uses join the outer one; an exception rolls back.
- ``Database._errors``: the one place a ``sqlite3.Error`` becomes a ``StateError``
  (``cannot <verb> <what>: <cause>``, with a hint when another process holds the lock).
- ``migrate``: append-only scripts numbered by ``PRAGMA user_version``; ``migrations[i]``
  takes version ``i`` to ``i + 1``, all in one transaction (a failure leaves the old
  version); a file newer than the code is refused.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError, StateError

LOCKED_HINT = "another reconciler (or sqlite3 shell) holds it; retry when it is done"


def connect(
    path: Path, *, busy_timeout: float, synchronous: str = "FULL", create: bool = True
) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) to ``path`` in WAL mode."""
    if create:
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True)
        if not path.exists():
            # Never open and close an fd of a database this process may already have open:
            # closing it drops every POSIX lock the process holds on the file (SQLite's
            # locks of the other connection), and another process then checkpoints under
            # a reader that thinks it is protected ("unable to get the page", a healthy
            # file taken for corrupt and moved aside).
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.chmod(path, 0o600)  # -wal and -shm inherit the mode
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if create:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(
    conn: sqlite3.Connection,
    migrations: Sequence[str],
    what: str,
    error: type[ReconcilerError] = StateError,
) -> None:
    """Run the scripts past the file's ``user_version``, atomically; ``what`` names the
    file in the refusal of a newer schema."""
    version = schema_version(conn)
    if version == len(migrations):
        return
    if version > len(migrations):
        raise error(
            f"cannot open {what}: schema version {version} is newer than "
            f"this reconciler knows ({len(migrations)})",
            "upgrade the reconciler, or move the database aside",
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated meanwhile.
        version = schema_version(conn)
        for script in migrations[version:]:
            for statement in statements(script):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {len(migrations)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def statements(script: str) -> Iterator[str]:
    """Split a script into complete statements (``executescript`` would commit midway)."""
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\n;"):
                yield buf
            buf = ""


def cause(exc: BaseException) -> str:
    """SQLite's message on one line: a corruption's spans two ("... *** in database main
    ***\nPage 2: btreeInitPage() ..."), which split a warning over two lines."""
    return " ".join(str(exc).split())


def is_locked(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


class Database:
    """An open SQLite file: transactions and reads with errors mapped. One per thread."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._depth = 0

    def close(self) -> None:
        self._conn.close()

    def limit_cache(self, kib: int) -> None:
        """Cap this connection's page cache at ``kib`` KiB (SQLite's default: 2,000 each).
        For a long-running process (the watch daemon): the OS page cache keeps the file's
        hot pages anyway, and each connection's own copy would stay resident."""
        with self._errors("configure"):
            self._conn.execute(f"PRAGMA cache_size = -{int(kib)}")

    def _what(self) -> str:
        """The file as messages name it (``state database '/var/lib/...'``)."""
        return f"database '{self.path}'"

    def _before_transaction(self) -> None:
        """Called before an outermost transaction or read (the sync store reopens a file
        replaced under it)."""

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``); nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._before_transaction()
        with self._errors("write"):
            self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            with self._errors("write"):
                self._conn.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):  # closed after a corruption: nothing to undo
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        if not self._depth:
            self._before_transaction()
        with self._errors("read"):
            return list(self._conn.execute(sql, params).fetchall())

    def _one(self, sql: str, params: Sequence[object] = ()) -> str | None:
        rows = self._rows(sql, params)
        return str(rows[0][0]) if rows else None

    @contextmanager
    def _errors(self, verb: str) -> Iterator[None]:
        """A sqlite3 error in the block becomes one StateError (``_translate``)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._translate(exc, verb) from None

    def _translate(self, exc: sqlite3.Error, verb: str) -> ReconcilerError:
        return translate(exc, self._what(), verb)


def translate(exc: sqlite3.Error, what: str, verb: str) -> StateError:
    """``cannot <verb> <what>: <cause>``, with a hint for a lock or an unwritable file."""
    text = cause(exc)
    if is_locked(exc):
        return StateError(f"cannot {verb} {what}: locked by another process", LOCKED_HINT)
    if "readonly" in text or "unable to open" in text:
        return StateError(
            f"cannot {verb} {what}: {text}",
            "check the state directory exists and is writable by root",
        )
    return StateError(f"cannot {verb} {what}: {text}")
