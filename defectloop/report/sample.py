"""A fabricated database for the report: what `defectloop demo` records, made up in a second.

For the report's tests, its benchmark and the README's screenshot: seeded synthetic garment photos as
images (with predictions and simulated labels), a champion/challenger history with comparisons, keeps
and promotions, and a demo run whose active arm learns faster than its random control arm. With
``checkpoint`` the binary versions point at a real (untrained) model checkpoint, so the gallery's
Grad-CAM heat-maps are real; without it they point at a file that does not exist.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from db import repositories as repo
from db.schema import (
    AnnotationOrigin,
    ComparisonDecision,
    DemoArm,
    DemoRunStatus,
    ImageStatus,
    ModelTask,
    SourceKind,
)
from defectloop.settings import DEFAULT_CLASSES

BINARY = ("ok", "defective")
STAGE_SECONDS = {"ingest": 2.0, "predict": 6.0, "rank": 0.4, "label": 1.5, "train": 40.0, "compare": 3.0}


@dataclass(frozen=True)
class Sample:
    """What was fabricated: the run's name, the images and the current champions' names."""

    run_name: str
    image_ids: tuple[int, ...]
    binary_champion: str
    multiclass_champion: str


def _curve(round_number: int, *, start: float, gain: float, speed: float) -> float:
    return start + gain * (1.0 - math.exp(-speed * round_number))


def _metrics(rng: np.random.Generator, f1: float, recall: float, n_eval: int) -> dict[str, Any]:
    edges = [i / 10 for i in range(11)]
    confidence = [round(0.05 + i / 10, 3) for i in range(10)]
    accuracy = [round(min(1.0, max(0.0, c - 0.1 * (1 - f1) + rng.normal(0, 0.03))), 3) for c in confidence]
    count = [int(v) for v in rng.multinomial(n_eval, [0.02] * 5 + [0.06, 0.1, 0.15, 0.22, 0.37])]
    defects = n_eval // 2
    tp = round(recall * defects)
    fp = round((1 - f1) * 0.6 * (n_eval - defects))
    binary = [[n_eval - defects - fp, fp], [defects - tp, tp]]
    types = list(DEFAULT_CLASSES[1:])
    per_type = 12
    right = min(per_type, round(per_type * (0.4 + 0.5 * f1)))
    # The misses go to the next defect type: a confusion matrix with something off its diagonal.
    multiclass = [
        [
            right if i == j else (per_type - right if j == (i + 1) % len(types) else 0)
            for j in range(len(types))
        ]
        for i in range(len(types))
    ]
    return {
        "macro_f1": round(f1, 4),
        "defect_recall": round(recall, 4),
        "defect_precision": round(min(1.0, f1 + 0.05), 4),
        "accuracy": round(min(1.0, f1 + 0.08), 4),
        "multiclass_macro_f1": round(max(0.0, f1 - 0.2), 4),
        "ece": round(0.15 * (1 - f1), 4),
        "calibration": {"bin_edges": edges, "confidence": confidence, "accuracy": accuracy, "count": count},
        "confusion": {
            "binary": {"classes": list(BINARY), "matrix": binary},
            "multiclass": {"classes": types, "matrix": multiclass},
        },
        "n_eval": n_eval,
        "threshold": 0.5,
        "threshold_flag": None,
    }


def _write_checkpoint(folder: Path, image_size: int) -> tuple[str, str]:
    """An untrained improved_cnn binary checkpoint: (path, sha256)."""
    import torch

    from models.data import InputSpec
    from models.registry import create_model
    from models.train import save_checkpoint

    torch.manual_seed(0)
    model = create_model("improved_cnn", num_classes=2, in_chans=1, pretrained=False)
    path = folder / "binary-improved_cnn-sample.pt"
    digest = save_checkpoint(
        path,
        model,
        architecture="improved_cnn",
        task="binary",
        class_names=BINARY,
        input_spec=InputSpec(image_size=image_size, channels=1),
    )
    return str(path), digest


def fabricate_report_data(
    session: Session,
    *,
    root: Path,
    rounds: int = 5,
    n_images: int = 48,
    predictions_per_image: int = 1,
    checkpoint: bool = True,
    seed: int = 0,
    run_name: str = "sample",
    image_size: int = 64,
) -> Sample:
    """Fill the database of ``session`` (flushed, not committed) with a demo run of ``rounds`` rounds
    after the seed round, ``n_images`` synthetic photos written under ``root`` with
    ``predictions_per_image`` predictions each (the last by the current champions), comparisons and
    promotions."""
    from defectloop.synth import generate_dataset

    rng = np.random.default_rng(seed)
    photos = root / "photos"
    generate_dataset(photos, n=n_images, seed=seed, size=image_size, write_masks=False)
    files = sorted(p for p in photos.rglob("*.png") if p.parent.name in DEFAULT_CLASSES)
    source = repo.get_or_create_source(session=session, name=f"sample-{run_name}", kind=SourceKind.SYNTHETIC)
    images: list[tuple[int, str]] = []
    for file in files:
        data = file.read_bytes()
        with PILImage.open(file) as picture:
            width, height, mode = picture.width, picture.height, picture.mode
        image, _ = repo.add_image(
            session=session,
            sha256=hashlib.sha256(data).hexdigest(),
            path=str(file),
            source_id=source.id,
            width=width,
            height=height,
            mode=mode,
            size_bytes=len(data),
            original_name=file.name,
            status=ImageStatus.PREDICTED,
        )
        images.append((image.id, file.parent.name))

    if checkpoint:
        artifact, digest = _write_checkpoint(root / "artifacts", image_size)
    else:
        artifact, digest = str(root / "artifacts" / "missing.pt"), "0" * 64
    spec = {"image_size": image_size, "channels": 1, "mean": [0.5], "std": [0.5]}
    evaluation = repo.create_evaluation_set(session=session, name=f"frozen-{run_name}", task=ModelTask.BINARY)
    repo.add_evaluation_members(
        session=session,
        evaluation_set_id=evaluation.id,
        members=dict(images[: max(2, len(images) // 5)]),
        reason="sample: the frozen evaluation set",
    )

    run = repo.create_demo_run(
        session=session,
        name=run_name,
        settings={
            "dataset": "synthetic garments",
            "rounds": rounds,
            "batch_size": 20,
            "strategy": "entropy",
            "image_size": image_size,
            "epochs": 3,
            "architectures": ["improved_cnn"],
            "webhook_secret": "not-shown",
        },
    )
    champion_f1 = None
    champion_id: int | None = None
    multiclass_id: int | None = None
    n_eval = 60
    for round_number in range(rounds + 1):
        for arm in (DemoArm.ACTIVE, DemoArm.RANDOM):
            active = arm is DemoArm.ACTIVE
            f1 = _curve(round_number, start=0.48, gain=0.32 if active else 0.2, speed=0.6 if active else 0.35)
            recall = _curve(round_number, start=0.4, gain=0.45 if active else 0.25, speed=0.5)
            labels = 20 + 20 * round_number
            defect_share = 0.55 if active and round_number else 0.3
            defects = 6 + sum(round(20 * defect_share) for _ in range(round_number))
            name_b = f"binary-improved_cnn-{run_name}-r{round_number}-{arm.value}"
            name_m = f"multiclass-improved_cnn-{run_name}-r{round_number}-{arm.value}"
            binary = repo.register_model_version(
                session=session,
                name=name_b,
                task=ModelTask.BINARY,
                architecture="improved_cnn",
                classes=list(BINARY),
                input_spec=spec,
                artifact_path=artifact,
                artifact_sha256=digest,
                training_snapshot={"n_train": labels},
                metrics={"macro_f1": round(f1, 4)},
            )
            multiclass = repo.register_model_version(
                session=session,
                name=name_m,
                task=ModelTask.MULTICLASS,
                architecture="improved_cnn",
                classes=list(DEFAULT_CLASSES[1:]),
                input_spec=spec,
                artifact_path=str(root / "artifacts" / f"{name_m}.pt"),
                artifact_sha256=hashlib.sha256(name_m.encode()).hexdigest(),
                metrics={"macro_f1": round(max(0.0, f1 - 0.2), 4)},
            )
            if active:
                gain = None if champion_f1 is None else f1 - champion_f1
                promote = gain is None or gain >= 0.02
                numbers: dict[str, Any] = {
                    "n_eval": n_eval,
                    "challenger": {"macro_f1": f1},
                    "champion": None if champion_f1 is None else {"macro_f1": champion_f1},
                }
                if gain is not None:
                    numbers |= {
                        "macro_f1_gain": gain,
                        "bootstrap": {"low": gain - 0.03, "high": gain + 0.05},
                        "mcnemar": {"p_value": max(0.001, 0.2 - gain * 2)},
                    }
                reason = (
                    f"promote: macro-F1 {f1:.3f} against {champion_f1:.3f}"
                    if promote and champion_f1 is not None
                    else f"promote: no champion yet; challenger macro-F1 {f1:.3f}"
                    if promote
                    else f"keep: macro-F1 gain {gain:+.3f} below minimum +0.020"
                )
                comparison = repo.record_comparison(
                    session=session,
                    evaluation_set_id=evaluation.id,
                    task=ModelTask.BINARY,
                    champion_version_id=champion_id,
                    challenger_version_id=binary.id,
                    decision=ComparisonDecision.PROMOTE if promote else ComparisonDecision.KEEP,
                    reason=reason,
                    numbers=numbers,
                )
                decide = repo.set_champion if promote else repo.reject_model_version
                decide(
                    session=session,
                    version_id=binary.id,
                    actor="policy",
                    reason=reason,
                    numbers=numbers,
                    comparison_id=comparison.id,
                )
                if promote:
                    champion_f1, champion_id = f1, binary.id
                repo.set_champion(
                    session=session,
                    version_id=multiclass.id,
                    actor="policy",
                    reason="sample: newest multiclass",
                )
                multiclass_id = multiclass.id
            timings = {
                stage: round(seconds * (1 + 0.1 * round_number) * float(rng.uniform(0.8, 1.2)), 2)
                for stage, seconds in STAGE_SECONDS.items()
            }
            repo.record_demo_round(
                session=session,
                run_id=run.id,
                round_number=round_number,
                arm=arm,
                labels_used=labels,
                defects_found=min(defects, labels),
                metrics=_metrics(rng, f1, recall, n_eval),
                timings=timings,
                binary_version=name_b,
                multiclass_version=name_m,
            )
    repo.set_demo_run_status(
        session=session, run_id=run.id, status=DemoRunStatus.FINISHED, reason="all rounds done"
    )
    assert champion_id is not None

    # Predictions: older champions' first, the current champions' last (the gallery shows those).
    versions = [v.id for v in repo.list_model_versions(session=session, task=ModelTask.BINARY)]
    keys = [*[v for v in versions if v != champion_id][: predictions_per_image - 1], champion_id]
    for index, (image_id, truth) in enumerate(images):
        for version_id in keys:
            right = rng.uniform() < 0.75
            guess = truth if right else str(rng.choice([c for c in DEFAULT_CLASSES if c != truth]))
            confidence = float(rng.uniform(0.34, 0.99))
            rest = (1.0 - confidence) / (len(DEFAULT_CLASSES) - 1)
            probabilities = {c: (confidence if c == guess else rest) for c in DEFAULT_CLASSES}
            repo.add_prediction(
                session=session,
                image_id=image_id,
                binary_version_id=version_id,
                multiclass_version_id=multiclass_id if version_id == champion_id else None,
                probabilities=probabilities,
                predicted_label=guess,
                confidence=confidence,
                uncertainty={
                    "entropy": float(-sum(p * math.log(p) for p in probabilities.values() if p > 0))
                },
            )
        if index % 3 == 0:
            repo.record_annotation(
                session=session,
                image_id=image_id,
                label=truth,
                annotator="simulated",
                origin=AnnotationOrigin.SIMULATED,
            )
    champion = repo.get_champion(session=session, task=ModelTask.BINARY)
    multiclass_champion = repo.get_champion(session=session, task=ModelTask.MULTICLASS)
    assert champion is not None
    assert multiclass_champion is not None
    return Sample(
        run_name=run_name,
        image_ids=tuple(i for i, _ in images),
        binary_champion=champion.name,
        multiclass_champion=multiclass_champion.name,
    )
