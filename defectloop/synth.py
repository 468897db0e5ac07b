"""Seeded synthetic garment-fabric photos for tests, the demo and the benchmarks.

Each image shows a knit or woven fabric (varied colour, yarn relief, lighting, folds, shadows, lint,
rotation, sensor noise, often a seam with a stitch row) and, unless it is ``ok``, one local defect: a
hole, seam puckering, an uncut thread, a raw edge or a broken stitch. Defects are local by
construction, so that a classifier has to look at structure: a logistic regression on global pixel
statistics stays near chance (see ``tests/unit/test_synth.py``). They are also sized and contrasted to
be seen at a glance at 48-64 px, as an inspector sees a real one, so that a small CNN learns ok versus
defective from a few hundred images in seconds on a CPU (``tests/unit/test_synth_learnable.py``).

The scene is drawn from the generator before the defect, and the defect and the sensor noise use their
own child streams, so the same ``rng`` rendered as ``ok`` and as a defect gives the same photo except
inside the defect's neighbourhood (when both have a seam). ``generate_dataset`` derives image ``i``'s
generator from ``(seed, i)``, so a larger ``n`` extends a smaller one and a seed reproduces its bytes.
Only numpy and Pillow are used; the scene is described in a 128-unit field of view and rendered at
twice the requested size before being box-filtered down, so every size shows the same scene.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from defectloop.settings import DEFAULT_CLASSES

__all__ = [
    "DEFAULT_CLASSES",
    "MANIFEST_COLUMNS",
    "SyntheticSample",
    "generate_dataset",
    "iter_samples",
    "label_for_index",
    "render_sample",
]

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path",
    "label",
    "index",
    "seed",
    "texture",
    "colour_mode",
    "has_seam",
    "defect_bbox",
    "mask_path",
)
MANIFEST_NAME = "manifest.csv"
MASKS_DIR = "masks"
# Written first, so that an interrupted run is still recognised as ours and may be overwritten.
_MARKER_NAME = ".defectloop-synth"
_FILE_RE = re.compile(r"^[A-Za-z0-9_\-]+_\d{6}\.png$")

# Classes that only exist on a seam; every other class gets a seam with the same probability as ok.
_SEAM_CLASSES = frozenset({"seam_puckering", "broken_stitch"})
_SEAM_PROBABILITY = 0.85
_DEFAULT_GRAYSCALE_SHARE = 0.3
# A line's share of good garments (the rest split evenly over the defect classes) when not balanced.
_OK_SHARE_UNBALANCED = 0.7

_UNITS = 128.0  # width of the field of view in scene units, whatever the pixel size
_HALF = _UNITS / 2

_F = npt.NDArray[Any]  # float32 arrays inside the renderer
_RGB = tuple[float, float, float]

# Fabric colours typical of intimate apparel; weights favour nude, black and white as on a real line.
_FABRICS: tuple[tuple[str, _RGB, float], ...] = (
    ("nude", (0.86, 0.70, 0.60), 3.0),
    ("beige", (0.82, 0.74, 0.62), 2.0),
    ("champagne", (0.92, 0.85, 0.72), 1.5),
    ("black", (0.085, 0.085, 0.095), 3.0),
    ("charcoal", (0.26, 0.26, 0.28), 1.0),
    ("white", (0.93, 0.93, 0.91), 2.5),
    ("ivory", (0.94, 0.91, 0.82), 1.5),
    ("blush", (0.94, 0.76, 0.78), 1.5),
    ("dusty_rose", (0.78, 0.56, 0.58), 1.0),
    ("lavender", (0.76, 0.71, 0.88), 1.0),
    ("baby_blue", (0.68, 0.79, 0.91), 1.0),
    ("mint", (0.70, 0.87, 0.79), 0.8),
    ("navy", (0.13, 0.17, 0.34), 1.0),
    ("burgundy", (0.44, 0.10, 0.17), 1.0),
    ("red", (0.78, 0.12, 0.17), 0.7),
    ("mocha", (0.45, 0.33, 0.27), 1.0),
    ("grey", (0.58, 0.58, 0.60), 1.0),
)
_THREADS: tuple[_RGB, ...] = (
    (0.93, 0.93, 0.90),
    (0.08, 0.08, 0.09),
    (0.74, 0.10, 0.12),
    (0.12, 0.15, 0.36),
    (0.80, 0.64, 0.30),
    (0.55, 0.55, 0.57),
    (0.84, 0.68, 0.58),
)


@dataclass(frozen=True, eq=False)
class SyntheticSample:
    """One rendered photo, its defect mask (all False for ``ok``) and how it was made."""

    image: Image.Image
    mask: npt.NDArray[np.bool_]
    label: str
    texture: str  # "knit" or "woven"
    colour: str  # fabric colour name, e.g. "nude"
    has_seam: bool
    rotation: float  # degrees
    grayscale: bool

    @property
    def bbox(self) -> tuple[int, int, int, int] | None:
        """Defect bounding box ``(x0, y0, x1, y1)`` in pixels, exclusive end; None for an empty mask."""
        ys, xs = np.nonzero(self.mask)
        if ys.size == 0:
            return None
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# --------------------------------------------------------------------------------------------------
# Small array helpers


class _Grid:
    """Pixel-centre coordinates of the internal (supersampled) canvas, in scene units."""

    def __init__(self, size: int) -> None:
        self.size = size
        # Twice the output resolution anti-aliases yarns and threads; large outputs need no help.
        self.ss = 2 if size <= 192 else 1
        self.res = size * self.ss
        self.px = self.res / _UNITS  # internal pixels per unit
        axis = ((np.arange(self.res, dtype=np.float32) + 0.5) / self.px - _HALF).astype(np.float32)
        self.x: _F = np.broadcast_to(axis[None, :], (self.res, self.res))
        self.y: _F = np.broadcast_to(axis[:, None], (self.res, self.res))


def _noise(rng: np.random.Generator, res: int, cells: int) -> _F:
    """Smooth value noise with about ``cells`` features across, roughly unit variance."""
    base = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray(base).resize((res, res), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _blur(a: _F, passes: int = 1) -> _F:
    """Separable [1, 2, 1] / 4 blur with edge replication, applied ``passes`` times on the last two axes."""
    out = a
    for _ in range(passes):
        p = np.pad(out, [(0, 0)] * (out.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
        out = 0.25 * p[..., :-2, 1:-1] + 0.5 * p[..., 1:-1, 1:-1] + 0.25 * p[..., 2:, 1:-1]
        p = np.pad(out, [(0, 0)] * (out.ndim - 2) + [(0, 0), (1, 1)], mode="edge")
        out = 0.25 * p[..., :, :-2] + 0.5 * p[..., :, 1:-1] + 0.25 * p[..., :, 2:]
    return out


def _shift(a: _F, dy: int, dx: int) -> _F:
    """Shift a 2-D array by whole pixels, filling with zeros (np.roll would wrap shadows around)."""
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def _pool(a: _F, k: int) -> _F:
    """Mean over k x k blocks of the first two axes (a box filter, as a camera pixel integrates light)."""
    if k == 1:
        return a
    # Summing strided views is several times faster than mean() over a reshaped array.
    out = sum(a[i::k, j::k] for i in range(k) for j in range(k))
    return np.asarray(out, dtype=np.float32) / (k * k)


def _smoothstep(t: _F) -> _F:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _composite(rgb: _F, alpha: _F, colour: _F) -> _F:
    """Alpha-blend ``colour`` (H, W, 3 or 3) over ``rgb``."""
    a = alpha[..., None]
    out: _F = rgb * (1.0 - a) + colour * a
    return out


class _Frame:
    """The fabric's own frame: seam along u, rotated by ``angle`` from the image axes."""

    def __init__(self, angle_deg: float) -> None:
        t = math.radians(angle_deg)
        self.c, self.s = math.cos(t), math.sin(t)

    def to_fabric(self, x: _F, y: _F) -> tuple[_F, _F]:
        return self.c * x + self.s * y, -self.s * x + self.c * y

    def to_image(self, uv: _F) -> _F:
        """(N, 2) fabric points -> (N, 2) image points."""
        u, v = uv[:, 0], uv[:, 1]
        return np.stack([self.c * u - self.s * v, self.s * u + self.c * v], axis=1)


def _draw_lines(grid: _Grid, lines: Sequence[tuple[_F, float]]) -> _F:
    """Coverage in [0, 1] of polylines given as ((N, 2) image points in units, width in units)."""
    aa = 4 if grid.px < 2 else 2
    scale = grid.px * aa
    img = Image.new("L", (grid.res * aa, grid.res * aa), 0)
    draw = ImageDraw.Draw(img)
    for pts, width in lines:
        xy = [(float(px), float(py)) for px, py in (pts + _HALF) * scale]
        w = max(1, round(width * scale))
        draw.line(xy, fill=255, width=w, joint="curve")
        if w >= 3:  # round caps: PIL ends wide lines square
            r = w / 2
            for cx, cy in (xy[0], xy[-1]):
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    return np.asarray(img.reduce(aa), dtype=np.float32) / 255.0


def _wander(rng: np.random.Generator, start: _F, heading: float, length: float, curl: float) -> _F:
    """A loose thread's centre line: a walk of unit steps whose heading drifts smoothly."""
    n = max(2, int(length * 2))
    turn = np.cumsum(rng.normal(0.0, curl, n)) * 0.5
    angles = heading + np.convolve(turn, np.ones(5) / 5, mode="same")
    steps = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 0.5
    return (start[None, :] + np.cumsum(steps, axis=0)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Scene


def _lum(rgb: _F) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def _contrasting(fabric: _F, rng: np.random.Generator) -> _F:
    """A thread colour that stands apart from the fabric (a loose thread is noticed because it does).

    Compared with the fabric as rendered: its yarn relief leaves it about a quarter darker than its dye.
    """
    seen = 0.75 * _lum(fabric)
    options = [np.array(t, dtype=np.float32) for t in _THREADS if abs(_lum(np.array(t)) - seen) > 0.3]
    return options[int(rng.integers(len(options)))]


def _standout(colour: _F, fabric: _F) -> _F:
    """A loose end of ``colour`` as it reads lying on ``fabric``: off the fabric's plane it is seen in
    its own shadow (or, on a dark fabric, catching the light), so a matching thread still shows."""
    seen = 0.75 * _lum(fabric)
    if abs(_lum(colour) - seen) >= 0.3:
        return colour
    if seen > 0.35:
        return (colour * 0.45).astype(np.float32)
    return (0.45 * colour + 0.5).astype(np.float32)


@dataclass(frozen=True)
class _Scene:
    """Everything about a photo except its defect; drawn before the defect so both can share it."""

    texture: str
    twill: bool
    colour_name: str
    fabric: _RGB
    rotation: float
    has_seam: bool
    seam_v: float
    stitch_side: float
    thread: _RGB
    params: dict[str, Any]
    defect_seed: int
    noise_seed: int
    detail_seed: int


def _draw_scene(rng: np.random.Generator, *, needs_seam: bool) -> _Scene:
    names = [f[0] for f in _FABRICS]
    weights = np.array([f[2] for f in _FABRICS])
    k = int(rng.choice(len(names), p=weights / weights.sum()))
    jitter = rng.normal(0.0, 0.03, 3)
    fabric = tuple(
        float(np.clip(c * (1 + j), 0.03, 0.97)) for c, j in zip(_FABRICS[k][1], jitter, strict=True)
    )
    texture = "knit" if rng.random() < 0.5 else "woven"
    twill = bool(rng.random() < 0.35)
    # Seams follow the grain, horizontally or vertically, with the garment a little askew.
    rotation = float(rng.choice([0.0, 90.0]) + np.clip(rng.normal(0.0, 7.0), -18.0, 18.0))
    has_seam = bool(rng.random() < _SEAM_PROBABILITY) or needs_seam
    seam_v = float(rng.uniform(-30.0, 30.0))
    stitch_side = float(rng.choice([-1.0, 1.0]))
    if rng.random() < 0.6:
        # Matching thread, as on most lingerie: a shade of the fabric, darker on light fabrics and
        # lighter (shinier) on dark ones, so the stitches still read.
        lum = 0.299 * fabric[0] + 0.587 * fabric[1] + 0.114 * fabric[2]
        if lum > 0.45:
            thread = tuple(float(c * rng.uniform(0.42, 0.65)) for c in fabric)
        else:
            thread = tuple(float(min(0.96, c * 1.3 + rng.uniform(0.12, 0.3))) for c in fabric)
    else:
        thread = tuple(float(c) for c in _contrasting(np.array(fabric, dtype=np.float32), rng))
    p: dict[str, Any] = {
        "wale": rng.uniform(5.5, 8.5),
        "course_ratio": rng.uniform(0.55, 0.75),
        "warp": rng.uniform(2.8, 5.2),
        "weft_ratio": rng.uniform(0.8, 1.25),
        "yarn_gamma": rng.uniform(0.5, 1.1),
        "weft_tone": rng.uniform(0.85, 1.05),
        "ply_shift": rng.uniform(0.0, 10.0, 2),
        "ply_gain": rng.uniform(0.9, 1.06),
        "fold_depth": rng.uniform(0.08, 0.22),
        "fold_width": rng.uniform(1.8, 3.6),
        "fold_sign": rng.choice([-1.0, 1.0]),
        "stitch_gap": rng.uniform(2.2, 4.5),
        "stitch_period": rng.uniform(4.2, 7.0),
        "stitch_duty": rng.uniform(0.55, 0.78),
        "stitch_width": rng.uniform(1.15, 1.7),
        "stitch_phase": rng.uniform(0.0, 1.0),
        "double_row": bool(rng.random() < 0.35),
        "row_spacing": rng.uniform(3.0, 5.0),
        "gain": rng.uniform(0.72, 1.12),
        "grad": rng.uniform(0.0, 0.22),
        "grad_dir": rng.uniform(0.0, 2 * math.pi),
        "vignette": rng.uniform(0.0, 0.3),
        "wrinkles": int(rng.choice([0, 1, 1, 2, 2, 3])),
        "shadow": bool(rng.random() < 0.4),
        "lint": int(rng.choice([0, 0, 0, 1, 2])),
        "blur": rng.uniform(0.0, 0.22),
        "noise": rng.uniform(0.004, 0.025),
        "relief": rng.uniform(0.3, 0.7),
    }
    seeds = rng.integers(0, 2**62, size=3)
    return _Scene(
        texture=texture,
        twill=twill,
        colour_name=names[k],
        fabric=(fabric[0], fabric[1], fabric[2]),
        rotation=rotation,
        has_seam=has_seam,
        seam_v=seam_v,
        stitch_side=stitch_side,
        thread=(thread[0], thread[1], thread[2]),
        params=p,
        defect_seed=int(seeds[0]),
        noise_seed=int(seeds[1]),
        detail_seed=int(seeds[2]),
    )


def _table(rng: np.random.Generator, sd: float, n: int = 97) -> _F:
    """Per-yarn random offsets, looked up by yarn index modulo a prime so no two neighbours repeat."""
    return rng.normal(0.0, sd, n).astype(np.float32)


def _knit(u: _F, v: _F, p: dict[str, Any], rng: np.random.Generator) -> _F:
    """Single-jersey face: columns (wales) of V-shaped loops, each V two tilted yarn legs."""
    pw = float(p["wale"])
    ph = pw * float(p["course_ratio"])
    wale_t, course_t = _table(rng, 0.03), _table(rng, 0.03)
    a = u / pw
    i = np.floor(a)
    fx = a - i
    left = fx < 0.5
    cx = (fx - np.where(left, np.float32(0.25), np.float32(0.75))) * pw
    b = v / ph
    j = np.floor(b)
    fy = b - j
    drift = 0.22 * pw  # how far a leg travels sideways over one course
    norm = math.hypot(drift, ph)
    dirx = np.where(left, np.float32(drift / norm), np.float32(-drift / norm))
    diry = ph / norm
    half_across = 0.2 * pw
    half_along = 0.62 * norm
    ii = (i.astype(np.int64) % 97).astype(np.intp)
    h = np.zeros_like(u)
    for k in (-1, 0, 1):
        cy = (fy - 0.5 - k) * ph
        along = cx * dirx + cy * diry
        across = cy * dirx - cx * diry
        t = (along / half_along) ** 2  # squared twice: float32 ** 4 goes through a slow powf
        leg = np.exp(-((across / half_across) ** 2) - t * t)
        jj = ((j.astype(np.int64) + k) % 97).astype(np.intp)
        h = np.maximum(h, leg * (1.0 + course_t[jj]))
    return h * (1.0 + wale_t[ii])


def _woven(u: _F, v: _F, p: dict[str, Any], twill: bool, rng: np.random.Generator) -> _F:
    """Over-under warp/weft interlacing (plain or 2/1 twill) with round yarn cross-sections."""
    pw = float(p["warp"])
    pf = pw * float(p["weft_ratio"])
    gamma = float(p["yarn_gamma"])
    warp_t, weft_t = _table(rng, 0.04), _table(rng, 0.04)
    a = u / pw
    i = np.floor(a)
    fu = a - i - 0.5
    b = v / pf
    j = np.floor(b)
    fv = b - j - 0.5
    ii = i.astype(np.int64)
    jj = j.astype(np.int64)
    warp_top = ((ii + jj) % 3 != 0) if twill else ((ii + jj) % 2 == 0)
    # Clipped: rounding can push |f| a hair past 0.5, and a negative base to a fractional power is NaN.
    cu = np.clip(np.cos(np.pi * fu), 0.0, 1.0)
    cv = np.clip(np.cos(np.pi * fv), 0.0, 1.0)
    warp = np.power(cu, gamma) * (0.72 + 0.28 * cv) * (1.0 + warp_t[(ii % 97).astype(np.intp)])
    weft = np.power(cv, gamma) * (0.72 + 0.28 * cu) * (1.0 + weft_t[(jj % 97).astype(np.intp)])
    weft = weft * float(p["weft_tone"])
    return np.where(warp_top, warp, weft)


def _fold(d: _F, p: dict[str, Any]) -> _F:
    """Shading across a seam: a raised ridge lit on one side, shadowed on the other, and a crease."""
    w = float(p["fold_width"])
    t = d / w
    ridge = float(p["fold_sign"]) * float(p["fold_depth"]) * 1.6 * t * np.exp(-(t**2))
    crease = 0.5 * float(p["fold_depth"]) * np.exp(-((d / 0.7) ** 2))
    out: _F = 1.0 + ridge - crease
    return out


def _stitch_row(
    u: _F, v: _F, row_v: float, p: dict[str, Any], phase: float, gap: tuple[int, int] | None
) -> tuple[_F, _F]:
    """Coverage of a row of regular stitches along u at v = row_v, and the needle-hole darkening.

    ``gap`` removes stitches ``k0 <= k < k1`` (a broken stitch); their needle holes stay visible.
    """
    sp, duty, width = float(p["stitch_period"]), float(p["stitch_duty"]), float(p["stitch_width"])
    s = u / sp + phase
    k = np.floor(s)
    f = s - k
    along = np.where(f < duty, np.power(np.clip(np.sin(np.pi * f / duty), 0.0, 1.0), 0.3), 0.0)
    across = np.exp(-(((v - row_v) / (0.6 * width)) ** 2))
    alpha = np.clip(1.5 * along * across, 0.0, 1.0)
    # The needle pierces the fabric where each stitch enters and leaves: tiny dark dimples.
    ends = np.minimum(np.abs(f), np.abs(f - duty)) * sp
    dimple = np.exp(-((ends / 0.6) ** 2) - ((v - row_v) / 0.8) ** 2)
    if gap is not None:
        missing = (k >= gap[0]) & (k < gap[1])
        # Where the thread pulled out, the needle holes gape open and the stitches left a pressed track.
        holes = np.exp(-((ends / 0.9) ** 2) - ((v - row_v) / 1.0) ** 2)
        dimple = np.where(missing, 1.7 * holes + 0.45 * np.clip(1.5 * along * across, 0.0, 1.0), dimple)
        alpha = np.where(missing, 0.0, alpha)
    return alpha.astype(np.float32), dimple.astype(np.float32)


def _lighting(grid: _Grid, p: dict[str, Any], rng: np.random.Generator) -> _F:
    x, y = grid.x, grid.y
    t = float(p["grad_dir"])
    gradient = 1.0 + float(p["grad"]) * (math.cos(t) * x + math.sin(t) * y) / _HALF
    r2 = (x**2 + y**2) / (_HALF**2 * 2)
    light = float(p["gain"]) * gradient * (1.0 - float(p["vignette"]) * r2)
    out: _F = (light * (1.0 + 0.04 * _noise(rng, grid.res, 4))).astype(np.float32)
    return out


def _shadows(grid: _Grid, p: dict[str, Any], rng: np.random.Generator) -> _F:
    """Wrinkles and soft cast shadows, present in every class so darkness never names a defect."""
    x, y = grid.x, grid.y
    out = np.ones_like(x)
    for _ in range(int(p["wrinkles"])):
        t = rng.uniform(0.0, math.pi)
        cx, cy = rng.uniform(-45.0, 45.0, 2)
        w = rng.uniform(2.5, 12.0)
        depth = rng.uniform(0.06, 0.22)
        span = rng.uniform(25.0, 90.0)
        d = (x - cx) * math.sin(t) - (y - cy) * math.cos(t)
        s = (x - cx) * math.cos(t) + (y - cy) * math.sin(t)
        q = d / w
        profile = -depth * np.exp(-(q**2)) + 0.6 * depth * q * np.exp(-(q**2))
        out = out * (1.0 + profile * np.exp(-((s / span) ** 2)))
    if p["shadow"]:
        t = rng.uniform(0.0, 2 * math.pi)
        along = math.cos(t) * x + math.sin(t) * y
        edge = rng.uniform(25.0, 55.0)
        soft = rng.uniform(5.0, 16.0)
        out = out * (1.0 - rng.uniform(0.15, 0.45) * _smoothstep((along - edge) / soft + 0.5))
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Defects. Each returns what it changes plus its coverage mask at internal resolution.


@dataclass
class _Canvas:
    grid: _Grid
    frame: _Frame
    scene: _Scene
    u: _F
    v: _F
    rgb: _F
    mask: _F
    h: _F  # yarn height map, reused to texture what shows through openings


def _beneath(cv: _Canvas, rng: np.random.Generator) -> _F:
    """What shows through an opening: the back ply in shadow on a light fabric, else skin or the table.

    Textured with the fabric's own yarn pattern (shifted), so it reads as cloth rather than a blot.
    """
    fabric = np.array(cv.scene.fabric, dtype=np.float32)
    shift = int(rng.integers(3, 9) * cv.grid.px)
    yarn = np.roll(cv.h, (shift, shift // 2), axis=(0, 1))
    if _lum(fabric) > 0.4:
        base = fabric * rng.uniform(0.3, 0.5)
        return base[None, None, :] * (0.55 + 0.45 * yarn[..., None])
    # Skin, a pale lining or the inspection table: clearly lighter than a dark fabric.
    base = np.array(_FABRICS[int(rng.choice([0, 1, 5]))][1], dtype=np.float32) * rng.uniform(0.6, 0.85)
    return base[None, None, :] * (0.85 + 0.15 * yarn[..., None])


def _hole(cv: _Canvas, rng: np.random.Generator) -> None:
    """A torn opening showing what lies beneath, with broken yarn ends and the odd intact float across it."""
    fabric = np.array(cv.scene.fabric, dtype=np.float32)
    lum = _lum(fabric)
    cu, cvv = rng.uniform(-40.0, 40.0, 2)
    if cv.scene.has_seam and abs(cvv - cv.scene.seam_v) < 14:
        cvv = cv.scene.seam_v + math.copysign(rng.uniform(14.0, 22.0), cvv - cv.scene.seam_v)
        cvv = float(np.clip(cvv, -50.0, 50.0))
    r0 = rng.uniform(9.0, 13.0)
    stretch = rng.uniform(1.0, 1.35)  # holes ladder along the grain
    du, dv = cv.u - cu, (cv.v - cvv) / stretch
    rho = np.hypot(du, dv)
    phi = np.arctan2(dv, du)
    radius = np.full_like(rho, r0)
    for k in range(2, 7):
        radius = radius + r0 * rng.normal(0.0, 0.22 / k) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    inside = np.clip((radius - rho) * cv.grid.px / 1.2 + 0.5, 0.0, 1.0)
    depth = 0.45 + 0.55 * _smoothstep((radius - rho) / 3.5)  # darker under the rim
    # The fabric around a tear is stretched and raised: a lit ring (a sheen on a dark fabric), shadowed
    # just inside the opening.
    ring = np.exp(-(((rho - radius) / 2.0) ** 2)) * (rho > radius)
    rgb = cv.rgb * (1.0 + 0.3 * ring[..., None]) + (0.2 * (1.0 - lum) * ring)[..., None]
    rgb = _composite(rgb, inside, _beneath(cv, rng) * depth[..., None])
    lines: list[tuple[_F, float]] = []
    grain = float(rng.choice([0.0, math.pi / 2]))
    for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):  # a yarn of the other direction survived
        off = rng.uniform(-0.6, 0.6) * r0
        a = np.array([[-1.3 * r0, off], [1.3 * r0, off + rng.normal(0, 0.8)]], dtype=np.float32)
        if grain:
            a = a[:, ::-1] * np.array([1.0, stretch], dtype=np.float32)
        pts = a + np.array([cu, cvv], dtype=np.float32)
        lines.append((cv.frame.to_image(pts), float(rng.uniform(0.8, 1.2))))
    for _ in range(int(rng.integers(14, 26))):
        at = float(rng.uniform(0, 2 * math.pi))
        ra = r0 * rng.uniform(0.95, 1.15)
        start = np.array([cu + ra * math.cos(at), cvv + ra * stretch * math.sin(at)], dtype=np.float32)
        inward = round(at / (math.pi / 2)) * (math.pi / 2) + math.pi  # broken yarns run along the grain
        pts = _wander(rng, start, inward + rng.normal(0, 0.4), rng.uniform(2.0, 0.55 * r0), 0.3)
        lines.append((cv.frame.to_image(pts), float(rng.uniform(0.9, 1.4))))
    yarn = _draw_lines(cv.grid, lines)
    tone = np.clip(fabric * rng.uniform(0.95, 1.15) + 0.08 * (1 - lum), 0.0, 1.0)
    cv.rgb = _composite(rgb, yarn, tone[None, None, :] * (0.8 + 0.3 * _blur(yarn, 1)[..., None]))
    cv.mask = np.maximum(np.clip((radius + 1.5 - rho) * cv.grid.px, 0.0, 1.0), yarn)


def _raw_edge(cv: _Canvas, rng: np.random.Generator) -> None:
    """An unfinished cut edge: a fabric ply ends in a fringe of loose yarn ends over the layer beneath."""
    fabric = np.array(cv.scene.fabric, dtype=np.float32)
    lum = _lum(fabric)
    if cv.scene.has_seam:
        edge_v = cv.scene.seam_v  # the seam allowance has come open beside the stitches
        side = -cv.scene.stitch_side
    else:
        edge_v = float(rng.uniform(-35.0, 35.0))
        side = float(rng.choice([-1.0, 1.0]))
    uc = float(rng.uniform(-28.0, 28.0))
    length = float(rng.uniform(40.0, 58.0))
    width = float(rng.uniform(10.0, 14.0))
    t = (cv.u - uc) / (length / 2)
    ragged = 1.0 + 0.2 * _noise(rng, cv.grid.res, 24)
    open_w = width * np.power(np.clip(1.0 - t**2, 0.0, 1.0), 0.5) * ragged
    s = side * (cv.v - edge_v)  # 0 at the far fabric, open_w at the cut ply's edge
    gap = np.clip((open_w - np.abs(s - open_w / 2) * 2) * cv.grid.px / 1.5 + 0.5, 0.0, 1.0)
    gap = gap * (open_w > 0.3)
    shade = 0.6 + 0.4 * _smoothstep(1.0 - s / np.maximum(open_w, 1e-3))  # the lifted ply casts a shadow
    # The cut ply's edge curls up and catches the light (on a dark fabric as a sheen).
    ridge = np.exp(-(((s - open_w) / 1.0) ** 2)) * (open_w > 0.3)
    rgb = cv.rgb * (1.0 + 0.25 * ridge[..., None]) + (0.25 * (1.0 - lum) * ridge)[..., None]
    # Under a lifted ply is shadow, whatever the fabric's colour; the fringe shows against it.
    yarn_below = np.roll(cv.h, int(5 * cv.grid.px), axis=0)
    beneath = fabric * rng.uniform(0.3, 0.45) * (0.6 + 0.4 * yarn_below)[..., None]
    rgb = _composite(rgb, gap, beneath * shade[..., None])
    lines: list[tuple[_F, float]] = []
    spacing = float(rng.uniform(1.0, 1.6))
    for uu in np.arange(uc - length / 2 + 1, uc + length / 2 - 1, spacing).tolist():
        w_here = width * max(0.0, 1.0 - ((uu - uc) / (length / 2)) ** 2) ** 0.5
        if w_here < 1.0 or rng.random() < 0.2:
            continue
        # Yarn ends hang from the cut ply across the opening; fewer fray from the far side.
        from_far = rng.random() < 0.25
        base_s = 0.0 if from_far else w_here
        start = np.array([uu + rng.normal(0, 0.3), edge_v + side * base_s], dtype=np.float32)
        heading = math.atan2(side * (1.0 if from_far else -1.0), 0.0) + rng.normal(0, 0.3)
        pts = _wander(rng, start, heading, w_here * float(rng.uniform(0.3, 0.95)), 0.35)
        lines.append((cv.frame.to_image(pts), float(rng.uniform(0.9, 1.4))))
    for _ in range(int(rng.integers(2, 5))):  # long loose fibres lying across
        start = np.array([uc + rng.uniform(-length / 3, length / 3), edge_v + side * width], dtype=np.float32)
        pts = _wander(rng, start, float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(6.0, 14.0)), 0.35)
        lines.append((cv.frame.to_image(pts), float(rng.uniform(0.5, 0.8))))
    yarn = _draw_lines(cv.grid, lines)
    # Cut yarn ends splay and catch the light: on a dark fabric they read clearly lighter.
    tone = np.clip(fabric * rng.uniform(1.0, 1.2) + 0.38 * (1 - lum), 0.0, 1.0)
    cv.rgb = _composite(rgb, yarn, tone[None, None, :] * (0.8 + 0.3 * _blur(yarn, 1)[..., None]))
    region = np.clip((open_w + 1.5 - np.abs(s - open_w / 2) * 2) * cv.grid.px, 0.0, 1.0) * (open_w > 0.3)
    cv.mask = np.maximum(region, yarn)


def _thread_on_fabric(cv: _Canvas, lines: list[tuple[_F, float]], colour: _F, mask_width: float) -> None:
    """Lay loose thread(s) on the fabric with a soft contact shadow."""
    alpha = _draw_lines(cv.grid, lines)
    off = max(1, round(0.8 * cv.grid.px))
    shadow = _blur(_shift(alpha, off, off), 2)
    rgb = cv.rgb * (1.0 - 0.45 * shadow[..., None])
    # A round thread catches the light along its middle.
    highlight = 1.0 + 0.25 * _blur(alpha, 1)
    cv.rgb = _composite(rgb, alpha, colour[None, None, :] * highlight[..., None])
    wide = [(pts, w + mask_width) for pts, w in lines]
    cv.mask = np.maximum(cv.mask, _draw_lines(cv.grid, wide))


def _uncut_thread(cv: _Canvas, rng: np.random.Generator) -> None:
    """A thread end left after sewing, curling loosely over the fabric from the seam (or anywhere)."""
    p = cv.scene.params
    if cv.scene.has_seam:
        row_v = cv.scene.seam_v + cv.scene.stitch_side * float(p["stitch_gap"])
        start = np.array([rng.uniform(-40.0, 40.0), row_v], dtype=np.float32)
        heading = math.pi / 2 * cv.scene.stitch_side * float(rng.choice([-1.0, 1.0])) + rng.normal(0, 0.4)
        colour = np.array(cv.scene.thread, dtype=np.float32)
    else:
        start = rng.uniform(-35.0, 35.0, 2).astype(np.float32)
        heading = float(rng.uniform(0, 2 * math.pi))
        colour = _contrasting(np.array(cv.scene.fabric, dtype=np.float32), rng)
    colour = _standout(colour, np.array(cv.scene.fabric, dtype=np.float32))
    length = float(rng.uniform(45.0, 70.0))
    curl = float(rng.uniform(0.06, 0.15))
    pts = cv.frame.to_image(_wander(rng, start, heading, length, curl))
    if np.mean(np.abs(pts).max(axis=1) < _HALF - 4) < 0.8:
        # Mostly out of view: let it fall the other way, so the defect is in the photo.
        pts = cv.frame.to_image(_wander(rng, start, heading + math.pi, length, curl))
    width = float(rng.uniform(2.2, 3.0))
    _thread_on_fabric(cv, [(pts, width)], colour, 3.0)


def _broken_stitch_gap(rng: np.random.Generator) -> tuple[int, int]:
    """Which stitches of the row are missing (indices along the row, around the image centre)."""
    k0 = int(rng.integers(-6, 2))
    return k0, k0 + int(rng.integers(4, 7))


def _broken_stitch_ends(cv: _Canvas, rng: np.random.Generator, gap: tuple[int, int], row_v: float) -> None:
    """Loose thread ends where the stitch row snapped, the seam gaping along the gap, and both as the mask."""
    p = cv.scene.params
    sp, phase = float(p["stitch_period"]), float(p["stitch_phase"])
    u0 = (gap[0] - phase) * sp  # start of the first missing stitch
    u1 = (gap[1] - 1 - phase + float(p["stitch_duty"])) * sp  # end of the last one
    seam_v = cv.scene.seam_v
    # Unheld, the two plies part a little along the gap: a slit showing what lies beneath.
    along = (cv.u - (u0 + u1) / 2) / ((u1 - u0) / 2 + 1.0)
    open_w = float(rng.uniform(1.2, 3.0)) * np.sqrt(np.clip(1.0 - along**2, 0.0, 1.0))
    slit = np.clip((open_w / 2 - np.abs(cv.v - seam_v)) * cv.grid.px + 0.5, 0.0, 1.0) * (open_w > 0.2)
    cv.rgb = _composite(cv.rgb, slit, _beneath(cv, rng))
    lines: list[tuple[_F, float]] = []
    width = max(2.2, float(p["stitch_width"]) * 1.4)
    lone = int(rng.integers(0, 6))  # 0 or 1: only that end shows; otherwise both
    for e, (u_end, direction) in enumerate(((u0, 1.0), (u1, -1.0))):
        if lone < 2 and e != lone:
            continue
        start = np.array([u_end, row_v], dtype=np.float32)
        # A snapped end springs away from the seam line and from the gap, so the gap stays visible.
        heading = math.atan2(float(rng.choice([-1.0, 1.0])), -direction * rng.uniform(0.1, 0.9))
        pts = _wander(rng, start, heading, float(rng.uniform(14.0, 24.0)), 0.3)
        lines.append((cv.frame.to_image(pts), width))
    colour = _standout(
        np.array(cv.scene.thread, dtype=np.float32), np.array(cv.scene.fabric, dtype=np.float32)
    )
    if lines:
        _thread_on_fabric(cv, lines, colour, 2.5)
    lo, hi = min(seam_v, row_v) - 2.5, max(seam_v, row_v) + 2.5
    box = (cv.u > u0 - 1.5) & (cv.u < u1 + 1.5) & (cv.v > lo) & (cv.v < hi)
    cv.mask = np.maximum(cv.mask, box.astype(np.float32))


def _puckering(u: _F, v: _F, seam_v: float, rng: np.random.Generator) -> tuple[_F, _F, _F, _F]:
    """Gathered ripples across a stretch of seam: displaced fabric coordinates, shading and mask."""
    uc = float(rng.uniform(-28.0, 28.0))
    half = float(rng.uniform(20.0, 30.0))
    wv = float(rng.uniform(9.0, 13.0))
    lam = float(rng.uniform(7.5, 12.0))
    amp = float(rng.uniform(0.4, 0.58))
    tilt = float(rng.uniform(-0.6, 0.6))  # puckers often run a little diagonally off the seam
    t = ((u - uc) / half) ** 2
    env_u = np.exp(-(t * t))
    env = env_u * np.exp(-(((v - seam_v) / wv) ** 2))
    # Gathers are uneven: the ripple spacing wanders a little along the seam.
    wobble = sum(
        rng.uniform(0.3, 0.9) * np.sin(u / rng.uniform(4.0, 9.0) + rng.uniform(0, 6.3)) for _ in range(2)
    )
    phi = 2 * np.pi * ((u - uc) + tilt * np.abs(v - seam_v)) / lam + wobble + rng.uniform(0, 2 * math.pi)
    # Gathering compresses the fabric along the seam and makes the seam line itself wave.
    ut = u + 0.35 * lam / (2 * np.pi) * np.sin(phi) * env
    vt = v + 1.8 * np.cos(phi) * env_u * np.exp(-(((v - seam_v) / (1.6 * wv)) ** 2))
    shading = 1.0 + amp * np.cos(phi) * env
    # The ripples fade out smoothly; the mask takes where they are still clearly there.
    return ut, vt, shading.astype(np.float32), (env > 0.2).astype(np.float32)


def _pucker_sheen(shading: _F, fabric: _F) -> _F:
    """Ripple crests as highlights: on dark fabrics a multiplicative shade alone would not show."""
    return np.clip(shading - 1.0, 0.0, None) * 0.5 * (1.0 - _lum(fabric))


# --------------------------------------------------------------------------------------------------
# Public API


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(classes)
    if not chosen:
        raise ValueError(f"classes must name at least one of: {', '.join(DEFAULT_CLASSES)}")
    unknown = [c for c in chosen if c not in DEFAULT_CLASSES]
    if unknown:
        raise ValueError(
            f"unknown synthetic class(es) {', '.join(map(repr, unknown))}; "
            f"the generator can render: {', '.join(DEFAULT_CLASSES)}"
        )
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"classes must not repeat a name: {', '.join(chosen)}")
    return chosen


def render_sample(
    label: str, rng: np.random.Generator, *, size: int = 128, grayscale: bool | None = None
) -> SyntheticSample:
    """Render one photo of class ``label`` from ``rng``.

    ``grayscale=None`` draws the colour mode from ``rng`` (30% grayscale). The mask marks the defect
    region at the output size (all False for ``ok``).
    """
    _check_classes([label])
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if grayscale is None:
        grayscale = bool(rng.random() < _DEFAULT_GRAYSCALE_SHARE)
    scene = _draw_scene(rng, needs_seam=label in _SEAM_CLASSES)
    p = scene.params
    defect_rng = np.random.default_rng(scene.defect_seed)
    detail_rng = np.random.default_rng(scene.detail_seed)
    grid = _Grid(size)
    frame = _Frame(scene.rotation)
    u, v = frame.to_fabric(grid.x, grid.y)
    mask: _F = np.zeros((grid.res, grid.res), dtype=np.float32)

    ut, vt = u, v
    pucker_shading: _F | None = None
    if label == "seam_puckering":
        ut, vt, pucker_shading, mask = _puckering(u, v, scene.seam_v, defect_rng)

    # The two plies of a seam are separate pieces: their yarns do not line up across it.
    tu, tv = ut, vt
    if scene.has_seam:
        other = vt > scene.seam_v
        shift = p["ply_shift"]
        tu = ut + np.where(other, float(shift[0]), 0.0)
        tv = vt + np.where(other, float(shift[1]), 0.0)
    if scene.texture == "knit":
        h = _knit(tu, tv, p, detail_rng)
    else:
        h = _woven(tu, tv, p, scene.twill, detail_rng)
    fibre = 0.07 * _noise(detail_rng, grid.res, grid.res // 3) + 0.05 * _noise(detail_rng, grid.res, 7)
    h = np.clip(h * (1.0 + fibre), 0.0, 1.2)

    fabric = np.array(scene.fabric, dtype=np.float32)
    lum = float(fabric @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    depth = float(p["relief"])  # how deep the yarn structure reads: flat microfibre to chunky knit
    body = (1.0 - depth + depth * h).astype(np.float32)
    # Dark fabrics show their structure as sheen on the yarn crowns rather than as albedo.
    sheen = (0.16 * (1.0 - lum) * h * h * h).astype(np.float32)
    rgb = fabric[None, None, :] * body[..., None] + sheen[..., None]

    gap: tuple[int, int] | None = None
    row_v = scene.seam_v + scene.stitch_side * float(p["stitch_gap"])
    if scene.has_seam:
        d = vt - scene.seam_v
        fold = _fold(d, p) * np.where(d > 0, float(p["ply_gain"]), 1.0)
        rgb = rgb * fold[..., None]
        if label == "broken_stitch":
            gap = _broken_stitch_gap(defect_rng)
        thread = np.array(scene.thread, dtype=np.float32)
        rows = [(row_v, float(p["stitch_phase"]), gap)]
        if p["double_row"]:
            rows.append(
                (row_v + scene.stitch_side * float(p["row_spacing"]), float(p["stitch_phase"]) + 0.5, None)
            )
        for rv, phase, g in rows:
            alpha, dimple = _stitch_row(ut, vt, rv, p, phase, g)
            off = max(1, round(0.6 * grid.px))
            relief = _blur(_shift(alpha, off, off), 1)  # stitches sit proud of the fabric
            rgb = rgb * (1.0 - 0.35 * dimple[..., None] - 0.3 * relief[..., None])
            across = np.exp(-(((vt - rv) / (0.45 * float(p["stitch_width"]))) ** 2))
            rgb = _composite(rgb, alpha, thread[None, None, :] * (0.8 + 0.3 * across[..., None]))

    cv = _Canvas(grid=grid, frame=frame, scene=scene, u=u, v=v, rgb=rgb, mask=mask, h=h)
    if label == "hole":
        _hole(cv, defect_rng)
    elif label == "raw_edge":
        _raw_edge(cv, defect_rng)
    elif label == "uncut_thread":
        _uncut_thread(cv, defect_rng)
    elif label == "broken_stitch" and gap is not None:
        _broken_stitch_ends(cv, defect_rng, gap, row_v)

    # Lint: short stray fibres on any garment, so a thin line alone does not mean "uncut thread".
    lint_lines: list[tuple[_F, float]] = []
    for _ in range(int(p["lint"])):
        start = detail_rng.uniform(-55.0, 55.0, 2).astype(np.float32)
        heading = float(detail_rng.uniform(0, 2 * math.pi))
        length = float(detail_rng.uniform(2.5, 7.0))
        lint_lines.append(
            (_wander(detail_rng, start, heading, length, 0.4), float(detail_rng.uniform(0.5, 0.8)))
        )
    if lint_lines:
        lint = _draw_lines(grid, lint_lines) * 0.6
        rgb_l = cv.rgb
        cv.rgb = _composite(rgb_l, lint, np.clip(fabric * 1.2 + 0.1, 0, 1)[None, None, :])

    shading = _shadows(grid, p, detail_rng) * _lighting(grid, p, detail_rng)
    out = cv.rgb
    if pucker_shading is not None:
        out = out * pucker_shading[..., None] + _pucker_sheen(pucker_shading, fabric)[..., None]
    out = out * shading[..., None]

    # Camera: optics (downsample, slight blur), then sensor noise and 8-bit quantisation.
    ss = grid.ss
    out = _pool(out, ss)
    chw = np.moveaxis(out, -1, 0)
    blur = float(p["blur"])
    chw = (1.0 - 4 * blur) * chw + 4 * blur * _blur(chw, 1)
    noise_rng = np.random.default_rng(scene.noise_seed)
    if grayscale:
        grey = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), chw, axes=1)
        grey = grey + noise_rng.normal(0.0, float(p["noise"]), grey.shape)
        image = Image.fromarray(np.clip(grey * 255 + 0.5, 0, 255).astype(np.uint8))
    else:
        chw = chw + noise_rng.normal(0.0, float(p["noise"]), chw.shape)
        hwc = np.moveaxis(chw, 0, -1)
        image = Image.fromarray(np.clip(hwc * 255 + 0.5, 0, 255).astype(np.uint8))
    small_mask = _pool(cv.mask, ss) > 0.3
    return SyntheticSample(
        image=image,
        mask=small_mask,
        label=label,
        texture=scene.texture,
        colour=scene.colour_name,
        has_seam=scene.has_seam,
        rotation=scene.rotation,
        grayscale=grayscale,
    )


def label_for_index(index: int, *, seed: int, classes: Sequence[str], balanced: bool = True) -> str:
    """The label of image ``index``: round-robin when balanced, else mostly ``ok`` (each class once first)."""
    chosen = _check_classes(classes)
    if balanced or index < len(chosen):
        return chosen[index % len(chosen)]
    # A stream of its own, so the label never shifts the image's scene stream.
    draw = float(np.random.default_rng([seed, index, 1]).random())
    if "ok" in chosen and len(chosen) > 1:
        if draw < _OK_SHARE_UNBALANCED:
            return "ok"
        defects = [c for c in chosen if c != "ok"]
        k = int((draw - _OK_SHARE_UNBALANCED) / (1 - _OK_SHARE_UNBALANCED) * len(defects))
        return defects[min(k, len(defects) - 1)]
    return chosen[min(int(draw * len(chosen)), len(chosen) - 1)]


def iter_samples(
    n: int,
    *,
    seed: int,
    size: int = 128,
    classes: Sequence[str] = DEFAULT_CLASSES,
    grayscale_share: float = _DEFAULT_GRAYSCALE_SHARE,
    balanced: bool = True,
) -> Iterator[tuple[int, SyntheticSample]]:
    """Yield ``(index, sample)`` for images ``0..n-1``; image ``i`` depends only on ``(seed, i)``."""
    chosen = _check_classes(classes)
    if not 0.0 <= grayscale_share <= 1.0:
        raise ValueError(f"grayscale_share must lie in [0, 1], got {grayscale_share}")
    for i in range(n):
        label = label_for_index(i, seed=seed, classes=chosen, balanced=balanced)
        rng = np.random.default_rng([seed, i])
        grayscale = bool(rng.random() < grayscale_share)
        yield i, render_sample(label, rng, size=size, grayscale=grayscale)


def _prepare_output(out: Path) -> None:
    """Create ``out`` or clear a previous synth output there; refuse anything else that is not empty."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"synth output {out} exists and is not a directory")
    if not out.exists():
        out.mkdir(parents=True)
        return
    entries = list(out.iterdir())
    if not entries:
        return
    if not (out / _MARKER_NAME).is_file():
        raise FileExistsError(
            f"refusing to write synthetic images into {out}: it is not empty and is not a previous "
            "`defectloop synth` output (no marker file); choose a new or empty directory"
        )
    # Remove only what a previous run wrote; anything else the user put there stays.
    for sub in entries:
        if sub.is_dir():
            for f in sub.iterdir():
                if f.is_file() and _FILE_RE.match(f.name):
                    f.unlink()
            if not any(sub.iterdir()):
                sub.rmdir()
    for name in (MANIFEST_NAME, MANIFEST_NAME + ".tmp", _MARKER_NAME):
        (out / name).unlink(missing_ok=True)


def generate_dataset(
    out: Path,
    *,
    n: int,
    seed: int,
    size: int = 128,
    classes: Sequence[str] = DEFAULT_CLASSES,
    grayscale_share: float = _DEFAULT_GRAYSCALE_SHARE,
    balanced: bool = True,
    write_masks: bool = True,
    progress: bool = False,
) -> Path:
    """Write ``n`` synthetic images as an ImageFolder under ``out`` and return the manifest's path.

    Layout: ``out/<class>/<class>_<index:06d>.png``, defect masks (255 = defect) in
    ``out/masks/<same name>.png`` and ``out/manifest.csv`` (columns ``MANIFEST_COLUMNS``, paths relative
    to ``out``, ``defect_bbox`` as ``x0 y0 x1 y1``). Note that ``masks/`` sits beside the class folders:
    a loader should take its classes from the manifest rather than from the folder names.
    Raises ValueError for an unknown class or ``n`` too small to show every class, and FileExistsError
    when ``out`` holds anything other than a previous synth output.
    """
    chosen = _check_classes(classes)
    if n < len(chosen):
        raise ValueError(f"n={n} is too small to show each of the {len(chosen)} classes at least once")
    out = Path(out)
    _prepare_output(out)
    (out / _MARKER_NAME).write_text(f"defectloop synth seed={seed} n={n} size={size}\n", encoding="utf-8")
    for c in chosen:
        (out / c).mkdir(exist_ok=True)
    if write_masks and any(c != "ok" for c in chosen):
        (out / MASKS_DIR).mkdir(exist_ok=True)

    samples: Iterable[tuple[int, SyntheticSample]] = iter_samples(
        n, seed=seed, size=size, classes=chosen, grayscale_share=grayscale_share, balanced=balanced
    )
    if progress:
        from rich.progress import track  # imported here: the rest of the module needs no rich

        samples = track(samples, total=n, description="synthesising")
    rows: list[dict[str, str]] = []
    for i, sample in samples:
        name = f"{sample.label}_{i:06d}.png"
        rel = f"{sample.label}/{name}"
        sample.image.save(out / rel)
        bbox = sample.bbox
        mask_rel = ""
        if write_masks and sample.label != "ok":
            mask_rel = f"{MASKS_DIR}/{name}"
            Image.fromarray(sample.mask.astype(np.uint8) * 255).save(out / mask_rel)
        rows.append(
            {
                "path": rel,
                "label": sample.label,
                "index": str(i),
                "seed": str(seed),
                "texture": sample.texture,
                "colour_mode": "L" if sample.grayscale else "RGB",
                "has_seam": "1" if sample.has_seam else "0",
                "defect_bbox": "" if bbox is None else " ".join(map(str, bbox)),
                "mask_path": mask_rel,
            }
        )
    manifest = out / MANIFEST_NAME
    tmp = out / (MANIFEST_NAME + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(manifest)  # readers never see a half-written manifest
    return manifest
