"""Claims on images and the re-publishing of what dead worker processes held, on a real SQLite registry
and real processes (a child that exited is a dead claimant, this process a live one)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import ImageStatus
from tests.db_helpers import new_image, new_source
from workers.claims import Claimant, republish_orphaned_claims


def dead_process() -> Claimant:
    """The claimant of a process of this machine that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=60)
    return Claimant(socket.gethostname(), Claimant.current().boot, int(out), 12345, "celery@gone")


def queued_images(sessions: sessionmaker[Session], claims: list[str | None]) -> list[int]:
    """One queued image per entry, claimed by it (None: unclaimed)."""
    ids = []
    with sessions() as session:
        source = new_source(session, "cam")
        for index, claim in enumerate(claims):
            image = new_image(session, f"{index}.png", source=source)
            repo.set_image_status(
                session=session, image_id=image.id, status=ImageStatus.QUEUED, claimed_by=claim
            )
            ids.append(image.id)
        session.commit()
    return ids


def test_a_claimant_is_this_process_and_reads_back_from_its_text() -> None:
    me = Claimant.current(node="celery@here")
    assert me.pid == os.getpid()
    assert me.host == socket.gethostname()
    assert Claimant.parse(str(me)) == me
    assert me.is_alive() is True
    assert Claimant.parse("not a claim") is None
    assert Claimant.parse("host:boot:notapid:1") is None
    # The same pid started at another time is another process (a pid reused after a restart).
    assert Claimant(me.host, me.boot, me.pid, me.start + 1).is_alive() is False
    assert dead_process().is_alive() is False
    assert Claimant(me.host, "another-boot", me.pid, me.start).is_alive() is False  # the machine rebooted
    assert Claimant("another-machine", me.boot, me.pid, me.start).is_alive() is None  # cannot tell


def test_only_the_images_of_dead_processes_are_published_again_and_only_once(
    sessions: sessionmaker[Session],
) -> None:
    dead, live = str(dead_process()), str(Claimant.current())
    elsewhere = str(Claimant("another-machine", "b00t", 77, 1, "celery@other"))
    ids = queued_images(sessions, [dead, live, dead, elsewhere, None, "garbage"])
    published: list[list[int]] = []

    again = republish_orphaned_claims(sessions=sessions, publish=published.append, batch_size=2)
    assert again == [ids[0], ids[2], ids[5]]  # an unreadable claim counts as a dead one
    assert published == [[ids[0], ids[2]], [ids[5]]]
    with sessions() as session:
        claims = [repo.get_image(session=session, image_id=i).claimed_by for i in ids]
        states = [repo.get_image(session=session, image_id=i).status for i in ids]
    assert claims == [None, live, None, elsewhere, None, None]
    assert states == [ImageStatus.QUEUED] * 6  # still waiting: the new messages find them

    # A second worker starting now finds nothing left to publish.
    assert republish_orphaned_claims(sessions=sessions, publish=published.append) == []
    assert len(published) == 2


def test_a_claim_taken_over_meanwhile_is_not_released(sessions: sessionmaker[Session]) -> None:
    dead = str(dead_process())
    [image_id] = queued_images(sessions, [dead])

    def takes_it_over(claimant: Claimant) -> bool:
        # Another worker takes the image (its message arrived) between the read and the release.
        with sessions() as session:
            repo.set_image_status(
                session=session,
                image_id=image_id,
                status=ImageStatus.QUEUED,
                claimed_by="h:b:1:1:celery@fast",
            )
            session.commit()
        return False

    assert (
        republish_orphaned_claims(sessions=sessions, publish=lambda ids: None, is_alive=takes_it_over) == []
    )
    with sessions() as session:
        assert repo.get_image(session=session, image_id=image_id).claimed_by == "h:b:1:1:celery@fast"
