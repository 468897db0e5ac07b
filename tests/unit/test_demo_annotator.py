"""The demo's direct simulated annotator on a real (SQLite) registry: it labels what the loop's ranking
puts first, from ground truth, once per image, as simulated annotations."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.schema import Annotation, AnnotationOrigin, ImageStatus
from db.session import session_scope
from defectloop.demo.annotators import SIMULATED_ANNOTATOR, Annotator, DirectAnnotator
from defectloop.errors import DefectloopError
from defectloop.settings import load_settings
from tests.db_helpers import mark_predicted, new_image, new_model_version, new_source

CLASSES = ("ok", "hole", "seam_puckering", "uncut_thread", "raw_edge", "broken_stitch")
# p(ok) per image: 0.5 is the most uncertain, 0.99 the least.
P_OK = [0.99, 0.5, 0.9, 0.6, 0.95, 0.7]


@pytest.fixture
def registry(sessions: sessionmaker[Session]) -> tuple[object, list[int]]:
    with session_scope(sessions) as session:
        source = new_source(session)
        champion = new_model_version(session)
        repo.set_champion(session=session, version_id=champion.id, actor="test", reason="first")
        ids = []
        for i, p_ok in enumerate(P_OK):
            image = new_image(session, f"photo-{i}.png", source=source)
            probabilities = {c: (p_ok if c == "ok" else (1 - p_ok) / 5) for c in CLASSES}
            mark_predicted(session, image.id, champion.id, probabilities, label="ok", confidence=p_ok)
            ids.append(image.id)
    return sessions, ids


def test_labels_the_most_informative_first_once_each_as_simulated(registry: tuple[object, list[int]]) -> None:
    sessions, ids = registry
    truth = {image_id: ("hole" if i % 2 else "ok") for i, image_id in enumerate(ids)}
    annotator: Annotator = DirectAnnotator(
        sessions=sessions,  # type: ignore[arg-type]
        settings=load_settings({"DEFECTLOOP_STRATEGY": "entropy"}),
        truth=truth.__getitem__,
    )
    first = annotator.label_batch(2)
    assert first == [ids[1], ids[3]], "p(ok) 0.5 and 0.6: the two least certain, most informative first"
    second = annotator.label_batch(10)
    assert sorted(second) == sorted(set(ids) - set(first)), "the rest, never one twice"
    assert annotator.label_batch(3) == [], "nothing left to label"
    with session_scope(sessions) as session:  # type: ignore[arg-type]
        rows = list(session.scalars(select(Annotation)))
        assert len(rows) == len(ids)
        assert {r.image_id for r in rows} == set(ids)
        assert {r.origin for r in rows} == {AnnotationOrigin.SIMULATED}
        assert {r.annotator for r in rows} == {SIMULATED_ANNOTATOR}
        assert {r.image_id: r.label for r in rows} == truth
        statuses = {repo.get_image(session=session, image_id=i).status for i in ids}
        assert statuses == {ImageStatus.LABELLED}


def test_refuses_a_strategy_it_cannot_rank_with(registry: tuple[object, list[int]]) -> None:
    sessions, _ = registry
    with pytest.raises(DefectloopError, match="embeddings"):
        DirectAnnotator(
            sessions=sessions,  # type: ignore[arg-type]
            settings=load_settings({"DEFECTLOOP_STRATEGY": "kcenter"}),
            truth=lambda _: "ok",
        )
