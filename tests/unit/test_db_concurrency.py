"""Several threads, each with its own connection and transaction, racing for the same rows.

These tests commit (a race needs separate transactions), so each one deletes the rows it made.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
from sqlalchemy import Engine, delete, func, select

from db import repositories as repo
from db.schema import Image, ImageStatus, Source, SourceKind
from db.session import make_session_factory, session_scope
from tests.db_helpers import new_image, new_source, sha_of

THREADS = 6
T = TypeVar("T")


def _race(work: Callable[[], T]) -> list[T]:
    """Run `work` in THREADS threads released at the same instant; their results."""
    barrier = threading.Barrier(THREADS)

    def start_together() -> T:
        barrier.wait(timeout=10)
        return work()

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(start_together) for _ in range(THREADS)]
        return [future.result(timeout=60) for future in futures]


@pytest.fixture
def source_name(db_engine: Engine) -> Iterator[str]:
    """A source name unique to the test; its images and the source are deleted afterwards."""
    name = f"race-{secrets.token_hex(4)}"
    yield name
    with session_scope(make_session_factory(db_engine)) as session:
        source_ids = select(Source.id).where(Source.name == name).scalar_subquery()
        session.execute(delete(Image).where(Image.source_id == source_ids))
        session.execute(delete(Source).where(Source.name == name))


def test_concurrent_ingest_of_the_same_bytes_makes_one_row(db_engine: Engine, source_name: str) -> None:
    factory = make_session_factory(db_engine)
    sha = sha_of(source_name)

    def ingest() -> tuple[int, bool]:
        with session_scope(factory) as session:
            source = repo.get_or_create_source(session=session, name=source_name, kind=SourceKind.CAMERA)
            image, created = repo.add_image(
                session=session,
                sha256=sha,
                path=f"/mnt/{source_name}/{threading.get_ident()}.png",
                source_id=source.id,
                width=8,
                height=8,
                mode="L",
                size_bytes=64,
            )
            return image.id, created

    results = _race(ingest)
    assert len({image_id for image_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with session_scope(factory) as session:
        assert session.scalar(select(func.count()).select_from(Image).where(Image.sha256 == sha)) == 1
        assert session.scalar(select(func.count()).select_from(Source).where(Source.name == source_name)) == 1


def test_concurrent_compare_and_set_moves_an_image_exactly_once(db_engine: Engine, source_name: str) -> None:
    factory = make_session_factory(db_engine)
    with session_scope(factory) as session:
        image = new_image(session, f"{source_name}.png", source=new_source(session, source_name))

    def claim() -> bool:
        with session_scope(factory) as session:
            return repo.set_image_status(
                session=session, image_id=image.id, status=ImageStatus.QUEUED, expected=[ImageStatus.NEW]
            )

    assert sorted(_race(claim)) == [False] * (THREADS - 1) + [True]
