"""Helpers the repository modules share: idempotent inserts, conditional updates, error translation
and argument checks. Private to `db.repositories`; nothing outside the package imports them."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from sqlalchemy import Table, Update, insert, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.errors import IntegrityViolation, NotFoundError
from db.schema import Base

_Row = TypeVar("_Row", bound=Base)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _insert_ignore(
    session: Session, model: type[Base], values: Mapping[str, Any], conflict_columns: Sequence[str]
) -> bool:
    """Insert a row unless one with the same `conflict_columns` exists; True if it was inserted."""
    session.flush()  # pending ORM rows must reach the database before a statement that bypasses the ORM
    table = cast(Table, model.__table__)
    row = dict(values)
    # RETURNING, not rowcount: the DBAPIs do not agree on rowcount after ON CONFLICT DO NOTHING.
    key = table.primary_key.columns[0]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg_stmt = postgresql.insert(table).values(row).on_conflict_do_nothing(index_elements=conflict_columns)
        return session.execute(pg_stmt.returning(key)).first() is not None
    if dialect == "sqlite":
        lite_stmt = sqlite.insert(table).values(row).on_conflict_do_nothing(index_elements=conflict_columns)
        return session.execute(lite_stmt.returning(key)).first() is not None
    # Other backends: a savepoint keeps the caller's transaction usable after the conflict.
    try:
        with session.begin_nested():
            session.execute(insert(table).values(row))
    except IntegrityError:
        return False
    return True


@contextmanager
def _integrity(message: str) -> Iterator[None]:
    """Turn a database rule violation at flush into `IntegrityViolation` with a message saying why."""
    try:
        yield
    except IntegrityError as exc:
        raise IntegrityViolation(
            f"{message}; the transaction must be rolled back (database said: {type(exc.orig).__name__})"
        ) from exc


def _insert_or_get(
    session: Session, model: type[_Row], values: Mapping[str, Any], conflict_columns: Sequence[str]
) -> tuple[_Row, bool]:
    """Insert a row unless one with the same `conflict_columns` exists (`_insert_ignore`); returns
    ``(row, created)``, the row being the stored one whichever process inserted it."""
    created = _insert_ignore(session, model, values, conflict_columns)
    key = [getattr(model, column) == values[column] for column in conflict_columns]
    return session.scalars(select(model).where(*key)).one(), created


def _add_row(session: Session, row: _Row, message: str) -> _Row:
    """Add a new row and flush it; a database rule it breaks raises `IntegrityViolation` with `message`."""
    session.add(row)
    with _integrity(message):
        session.flush()
    return row


def _get(session: Session, model: type[_Row], row_id: int, what: str) -> _Row:
    row = session.get(model, row_id)
    if row is None:
        raise NotFoundError(f"{what} {row_id} does not exist; check the id (was its transaction committed?)")
    return row


def _update_rows(session: Session, model: type[Base], stmt: Update) -> int:
    """Run a conditional UPDATE of `model` rows; how many rows it changed (see `_updated_ids`)."""
    return len(_updated_ids(session, model, stmt))


def _updated_ids(session: Session, model: type[Base], stmt: Update) -> list[int]:
    """Run a conditional UPDATE of `model` rows; the ids of the rows it changed, in order.

    The objects of those rows that this session holds are expired, so they reload on next access:
    the ORM's own synchronisation skips attributes an object never loaded (a column left None at
    insert), which would leave stale values behind.
    """
    id_column = sa_inspect(model).primary_key[0]
    ids = sorted(session.scalars(stmt.returning(id_column).execution_options(synchronize_session=False)))
    for row_id in ids:
        held = session.identity_map.get(session.identity_key(model, row_id))
        if held is not None:
            session.expire(held)
    return ids


def _float_dict(values: Mapping[str, Any], what: str) -> dict[str, float]:
    # float(): numpy scalars are not JSON serialisable.
    try:
        return {str(key): float(value) for key, value in values.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must map names to numbers: {exc}") from exc


def _check_sha256(value: str, what: str = "sha256") -> None:
    if not _SHA256.match(value):
        raise ValueError(f"{what} must be 64 lowercase hex characters, got {value!r}")


def _require_text(value: str, what: str) -> None:
    if not value or not value.strip():
        raise ValueError(f"{what} must not be empty: it is the audit trail of why")
