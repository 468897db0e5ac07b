"""Named sync cursors and leases, both rows of the ``sync_cursors`` table (a lease's position is its
expiry)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.repositories._common import _insert_ignore, _require_text, _update_rows
from db.schema import SyncCursor, utcnow


def get_sync_cursor(*, session: Session, name: str) -> datetime | None:
    """Where the named sync got to, or None before its first run."""
    return session.scalars(select(SyncCursor.position).where(SyncCursor.name == name)).one_or_none()


def advance_sync_cursor(*, session: Session, name: str, position: datetime) -> datetime:
    """Move the named cursor forward to ``position`` (never back); returns the stored position.

    Idempotent, and safe when two runs race: each only ever moves the cursor forward.
    """
    _require_text(name, "name")
    _insert_ignore(session, SyncCursor, {"name": name, "position": position}, ["name"])
    stmt = (
        update(SyncCursor)
        .where(SyncCursor.name == name, SyncCursor.position < position)
        .values(position=position, updated_at=utcnow())
    )
    _update_rows(session, SyncCursor, stmt)
    stored = get_sync_cursor(session=session, name=name)
    assert stored is not None
    return stored


def try_acquire_lease(*, session: Session, name: str, until: datetime, now: datetime | None = None) -> bool:
    """Take the named lease until ``until`` unless another holder's lease is still running; True if taken.

    One conditional UPDATE, so of two processes racing exactly one wins (on SQLite and PostgreSQL alike).
    A holder that dies simply lets its lease run out. Leases share the ``sync_cursors`` table: the
    position is the lease's expiry.
    """
    _require_text(name, "name")
    moment = now or utcnow()
    _insert_ignore(session, SyncCursor, {"name": name, "position": moment - timedelta(seconds=1)}, ["name"])
    stmt = (
        update(SyncCursor)
        .where(SyncCursor.name == name, SyncCursor.position <= moment)
        .values(position=until, updated_at=utcnow())
    )
    return _update_rows(session, SyncCursor, stmt) == 1


def release_lease(*, session: Session, name: str, now: datetime | None = None) -> None:
    """End the named lease now (its holder is done)."""
    stmt = (
        update(SyncCursor)
        .where(SyncCursor.name == name)
        .values(position=now or utcnow(), updated_at=utcnow())
    )
    _update_rows(session, SyncCursor, stmt)


def reset_sync_cursor(*, session: Session, name: str) -> bool:
    """Forget the named cursor (a full resync starts from the beginning); True if one existed."""
    row = session.get(SyncCursor, name)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True
