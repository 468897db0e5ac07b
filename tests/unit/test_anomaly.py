"""The per-source texture-anomaly model (models.anomaly): fitted on unlabelled images of one texture, it
scores an image with a blob above clean ones and points its heat-map at the blob; saved and loaded with
its hash checked. Small synthetic images (64 px), the packaged encoder; no downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.anomaly import (
    AnomalyConfig,
    build_encoder,
    fit_anomaly_model,
    load_anomaly_model,
    patch_descriptors,
    pooled_descriptors,
    stage_features,
)
from models.errors import CheckpointIntegrityError, ModelError
from models.pretrained import packaged_weights

SIZE = 64


def _texture(n: int, seed: int, blob: bool = False) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Woven-like stripes with noise, normalised to [-1, 1]; with ``blob`` a dark 8x8 spot somewhere."""
    rng = np.random.default_rng(seed)
    xx = np.mgrid[0:SIZE, 0:SIZE][1]
    images, centres = [], []
    for _ in range(n):
        phase = rng.uniform(0, 2 * np.pi)
        img = 0.5 + 0.2 * np.sin(xx * 2 * np.pi / 6 + phase) + 0.05 * rng.standard_normal((SIZE, SIZE))
        if blob:
            r, c = (int(v) for v in rng.integers(12, SIZE - 12, 2))
            img[r - 4 : r + 4, c - 4 : c + 4] = 0.05
            centres.append((r, c))
        images.append(np.clip(img, 0, 1))
    x = torch.as_tensor(np.stack(images), dtype=torch.float32)[:, None]
    return (x - 0.5) / 0.5, centres


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    return build_encoder("efficientnet_lite0", packaged_weights("efficientnet_lite0"))


@pytest.fixture(scope="module")
def fitted(encoder: torch.nn.Module):  # type: ignore[no-untyped-def]
    clean, _ = _texture(24, seed=1)
    return fit_anomaly_model(
        encoder, clean, AnomalyConfig(stages=(1, 2), bank_size=4000, k=3), source="cam-a"
    )


def test_an_image_with_a_defect_scores_above_clean_ones_and_the_map_points_at_it(
    encoder: torch.nn.Module, fitted
) -> None:  # type: ignore[no-untyped-def]
    clean, _ = _texture(12, seed=2)
    spotted, centres = _texture(12, seed=3, blob=True)
    clean_scores, _ = fitted.score(encoder, clean)
    spot_scores, maps = fitted.score(encoder, spotted)
    assert spot_scores.min() > clean_scores.median()
    assert spot_scores.mean() > clean_scores.max()
    # The heat-map's maximum lies within a cell or two of the blob (the grid is 1/4 of the image here).
    cell = SIZE / maps.shape[-1]
    for heat, (r, c) in zip(maps, centres, strict=True):
        row, col = np.unravel_index(int(heat.argmax()), heat.shape)
        assert abs((row + 0.5) * cell - r) <= 2 * cell
        assert abs((col + 0.5) * cell - c) <= 2 * cell
    # Percentiles place scores among the held-out clean images: comparable across sources.
    assert np.all(fitted.percentile(spot_scores.numpy()) >= 0.9)
    pct = fitted.percentile(np.sort(clean_scores.numpy()))
    assert np.all((pct >= 0) & (pct <= 1))
    assert np.all(np.diff(pct) >= 0)


def test_save_and_load_give_the_same_scores_and_a_changed_file_is_refused(
    encoder: torch.nn.Module, fitted, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "anomaly" / "cam-a.pt"
    sha = fitted.save(path)
    loaded = load_anomaly_model(path, expected_sha256=sha)
    x, _ = _texture(4, seed=5, blob=True)
    assert torch.equal(loaded.score(encoder, x)[0], fitted.score(encoder, x)[0])
    assert loaded.source == "cam-a"
    assert loaded.config == fitted.config
    assert np.array_equal(loaded.reference, fitted.reference)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError, match="sha256"):
        load_anomaly_model(path, expected_sha256=sha)
    with pytest.raises(CheckpointIntegrityError, match="does not exist"):
        load_anomaly_model(tmp_path / "none.pt", expected_sha256=sha)


def test_fitting_is_deterministic_and_keeps_held_out_groups_out_of_the_bank(encoder: torch.nn.Module) -> None:
    images, _ = _texture(10, seed=7)
    groups = [f"photo{i // 2}" for i in range(10)]  # pairs of tiles of one photo
    config = AnomalyConfig(stages=(1, 2), bank_size=500, holdout=0.4, seed=3)
    a = fit_anomaly_model(encoder, images, config, groups=groups)
    b = fit_anomaly_model(encoder, images, config, groups=groups)
    assert torch.equal(a.bank, b.bank)
    assert a.reference.size == 4  # 2 of 5 photos held out, both tiles of each
    assert len(a.bank) == 500
    # Precomputed descriptors give the same model as the images.
    desc = patch_descriptors(stage_features(encoder, images, config.stages))
    c = fit_anomaly_model(encoder, torch.empty(0), config, groups=groups, descriptors=desc)
    assert torch.equal(a.bank, c.bank)


def test_bad_requests_say_what_is_wrong(encoder: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="k <= bank_size"):
        AnomalyConfig(k=5, bank_size=2)
    with pytest.raises(ValueError, match="holdout"):
        AnomalyConfig(holdout=1.0)
    one, _ = _texture(1, seed=0)
    with pytest.raises(ValueError, match="at least 2 images"):
        fit_anomaly_model(encoder, one)
    with pytest.raises(ValueError, match="stage 40 does not exist"):
        stage_features(encoder, one, (40,))
    with pytest.raises(ModelError, match="no stages"):
        stage_features(torch.nn.Linear(2, 2), one, (0,))


def test_pooled_descriptors_hold_mean_and_max_of_each_stage(encoder: torch.nn.Module) -> None:
    x, _ = _texture(3, seed=4)
    feats = stage_features(encoder, x, (2, 3))
    pooled = pooled_descriptors(feats)
    channels = feats[2].shape[1] + feats[3].shape[1]
    assert pooled.shape == (3, 2 * channels)
    assert torch.allclose(pooled[:, : feats[2].shape[1]], feats[2].mean(dim=(2, 3)))
    # The small CNNs work as encoders too (stages = their conv stages).
    cnn = build_encoder("improved_cnn", None)
    assert set(stage_features(cnn, x, (1, 2))) == {1, 2}
