"""ShapesEval's analyzer: find the shapes in an image and check them against a spec.

Detection, in pure numpy: blur 3x3 (tames VQ speckle and noise); estimate the background color
from the image border; mark pixels far from it in RGB; split the mark into 8-connected
components, drop small ones, and trim each to where its contrast is at least half its interior's
(the true outline of a blurred edge, without JPEG color bleed). A component's color is named
from the median of its interior pixels (nearest palette hue; black by darkness) and its shape
from simple geometry of its mask (taper from top to bottom, fill of its box and of the box's
corners), with thresholds that hold on VQ-like degraded renders.
Scoring follows GenEval's rules (evaluate_images.py), with (shape, color) as the class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from lumina_mgpt.shapes.spec import COLORS, Spec
from lumina_mgpt.shapes.world import geometry_scale

LOOSE_CONTRAST = 60.0  # RGB distance from the background that starts a candidate object
EDGE_LEVEL = 0.5  # an object's outline is where contrast falls to half of its interior's
CHROMA_MIN = 50.0  # a less colorful object is black (if dark) or has no palette color
DARK_FRACTION = 0.55  # black: brightness below this fraction of the background's
MIN_AREA = 30  # pixels at the 64x64 reference scale; smaller components are VQ speckle
MIN_FILL = 0.45  # sparser components (rings, scribbles) are no shape
TRIANGLE_LIMIT = 0.925  # taper + fill / 2 below this: triangle (0.55-0.88 vs 0.97+ seen)
SQUARE_LIMIT = 0.795  # 0.7 fill + 0.3 corner fill at least this: square (0.81+ vs 0.78-)
MAX_ASPECT = 1.5  # shapes have square boxes; longer components are merged or broken blobs
MAX_HUE_DISTANCE = 25.0  # degrees from the nearest palette hue before a color goes unnamed
POSITION_THRESHOLD = 0.1  # GenEval's relative_position: box-size share ignored in offsets


@dataclass(frozen=True)
class DetectedObject:
    """One component; `shape`/`color` are None when they match nothing in the world."""

    shape: str | None
    color: str | None
    center: tuple[float, float]
    area: int
    bbox: tuple[int, int, int, int]  # left, top, right, bottom (right/bottom exclusive)


def _hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees of (..., 3) float RGB arrays (undefined, 0, for grays)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = np.maximum(high - low, 1e-6)
    hue = np.where(
        high == r,
        ((g - b) / chroma) % 6,
        np.where(high == g, (b - r) / chroma + 2, (r - g) / chroma + 4),
    )
    return hue * 60.0


_CHROMATIC = {name: rgb for name, rgb in COLORS.items() if name != "black"}
_PALETTE_HUES = {
    name: float(_hue_degrees(np.asarray(rgb, dtype=np.float64)))
    for name, rgb in _CHROMATIC.items()
}


def _box_blur(pixels: np.ndarray) -> np.ndarray:
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = pixels.shape[:2]
    total = sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3))
    return total / 9.0


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean mask: (labels with 0 = off, number of components).

    Every pixel starts with its own index + 1 and repeatedly takes the largest label around it;
    since a label names a pixel of the same component, whose label is never smaller, pixels
    also adopt the label of the pixel their label names (pointer jumping), which makes the
    number of rounds grow with the log of a component's size rather than its length.
    """
    height, width = mask.shape
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    padded = np.zeros((height + 2, width + 2), dtype=labels.dtype)
    while True:
        padded[1:-1, 1:-1] = labels
        spread = labels.copy()
        for dy in range(3):
            for dx in range(3):
                np.maximum(spread, padded[dy : dy + height, dx : dx + width], out=spread)
        spread = np.where(mask, spread, 0)
        jumped = np.where(mask, spread.ravel()[np.maximum(spread, 1) - 1], 0)
        if np.array_equal(jumped, labels):
            break
        labels = jumped
    values, dense = np.unique(labels, return_inverse=True)
    dense = dense.reshape(mask.shape)
    if values[0] != 0:  # every pixel is foreground: shift so that no component is labelled 0
        dense = dense + 1
    return dense, int(np.count_nonzero(values))


def _background_color(smooth: np.ndarray) -> np.ndarray:
    """The background's RGB: the per-channel median over the image border."""
    border = np.concatenate([smooth[0], smooth[-1], smooth[1:-1, 0], smooth[1:-1, -1]], axis=0)
    return np.median(border, axis=0)


def _name_color(rgb: np.ndarray, background_value: float) -> str | None:
    chroma = float(np.ptp(rgb))
    if chroma < CHROMA_MIN:
        return "black" if float(rgb.max()) <= DARK_FRACTION * background_value else None
    hue = float(_hue_degrees(rgb))
    distances = {
        name: min(abs(hue - palette_hue), 360.0 - abs(hue - palette_hue))
        for name, palette_hue in _PALETTE_HUES.items()
    }
    name = min(distances, key=distances.__getitem__)
    return name if distances[name] <= MAX_HUE_DISTANCE else None


def shape_features(component: np.ndarray) -> tuple[float, float, float]:
    """(taper, fill, corner fill) of a component cropped to its bounding box.

    taper: mean width of the top 30 % of rows over that of the bottom 30 % (an up-pointing
    triangle is narrow on top); fill: share of the box covered; corner fill: share of the four
    corner patches (a quarter of each side) covered, where a circle leaves gaps.
    """
    height, width = component.shape
    band = max(1, round(height * 0.3))
    widths = component.sum(axis=1)
    taper = float(widths[:band].mean() / max(widths[-band:].mean(), 1.0))
    fill = float(component.mean())
    rows, cols = max(1, round(height / 4)), max(1, round(width / 4))
    corners = (
        component[:rows, :cols],
        component[:rows, -cols:],
        component[-rows:, :cols],
        component[-rows:, -cols:],
    )
    corner_fill = float(np.mean([corner.mean() for corner in corners]))
    return taper, fill, corner_fill


def _name_shape(component: np.ndarray) -> str | None:
    # Thresholds separate the shapes with a margin on renders degraded by x4 downscaling,
    # JPEG 30 and the VQ-like mix (see degrade.py); the raw renders are far apart.
    height, width = component.shape
    taper, fill, corner_fill = shape_features(component)
    if max(height, width) > MAX_ASPECT * min(height, width) or fill < MIN_FILL:
        return None
    if taper + 0.5 * fill < TRIANGLE_LIMIT:
        return "triangle"
    return "square" if 0.7 * fill + 0.3 * corner_fill >= SQUARE_LIMIT else "circle"


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    return (
        mask
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )


def _describe_component(
    component: np.ndarray, pixels: np.ndarray, background_value: float, origin: tuple[int, int]
) -> DetectedObject:
    """A detection for one component (a mask over `pixels`, which start at `origin` = (x, y))."""
    rows = np.flatnonzero(component.any(axis=1))
    cols = np.flatnonzero(component.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    # The interior avoids edge pixels blended with the background.
    interior = _erode(component)
    core = pixels[interior if interior.any() else component]
    x, y = origin
    return DetectedObject(
        shape=_name_shape(component[top:bottom, left:right]),
        color=_name_color(np.median(core, axis=0), background_value),
        center=(x + (left + right) / 2, y + (top + bottom) / 2),
        area=int(np.count_nonzero(component)),
        bbox=(x + left, y + top, x + right, y + bottom),
    )


def detect(image: Image.Image) -> list[DetectedObject]:
    """Every shape-like object in `image`, largest first."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    height, width = pixels.shape[:2]
    smooth = _box_blur(pixels)
    background = _background_color(smooth)
    background_value = float(background.max())
    contrast = np.linalg.norm(smooth - background, axis=-1)
    labels, count = connected_components(contrast >= LOOSE_CONTRAST)
    min_area = MIN_AREA * geometry_scale(width, height) ** 2
    detections = []
    for label in range(1, count + 1):
        candidate = labels == label
        if np.count_nonzero(candidate) < min_area:
            continue
        rows = np.flatnonzero(candidate.any(axis=1))
        cols = np.flatnonzero(candidate.any(axis=0))
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        local = contrast[window]
        # Trim to half the interior's contrast: the true outline of a blurred edge, without
        # JPEG color bleed or halos, which may also have joined two objects into one candidate.
        interior_contrast = np.percentile(local[candidate[window]], 90)
        trimmed = candidate[window] & (local >= EDGE_LEVEL * interior_contrast)
        parts, part_count = connected_components(trimmed)
        for part in range(1, part_count + 1):
            component = parts == part
            if np.count_nonzero(component) >= min_area:
                origin = (int(cols[0]), int(rows[0]))
                detections.append(
                    _describe_component(component, pixels[window], background_value, origin)
                )
    return sorted(detections, key=lambda d: -d.area)


def relations_between(subject: DetectedObject, reference: DetectedObject) -> set[str]:
    """Which of 'left of', 'right of', 'above', 'below' hold for subject vs reference.

    GenEval's rule: the center offset, shrunk by a share of both box sizes, must point mostly
    along the relation's axis (normalized component beyond 0.5).
    """
    offset = np.subtract(subject.center, reference.center)
    dims = np.array(
        [
            subject.bbox[2] - subject.bbox[0] + reference.bbox[2] - reference.bbox[0],
            subject.bbox[3] - subject.bbox[1] + reference.bbox[3] - reference.bbox[1],
        ],
        dtype=np.float64,
    )
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def score_detections(detections: list[DetectedObject], spec: Spec) -> bool:
    """GenEval's verdict for detections (largest first) against a spec.

    Each group needs `count` objects of its shape and color (exactly `count`, and no other object
    of that shape, for counting); the relation must hold between every pair of the groups'
    objects.
    """
    matched: list[list[DetectedObject]] = []
    for group in spec.groups:
        found = [d for d in detections if group.matches(d.shape, d.color)]
        if group.exact:
            same_shape = sum(1 for d in detections if d.shape == group.shape)
            if len(found) != group.count or same_shape != group.count:
                return False
        elif len(found) < group.count:
            return False
        matched.append(found[: group.count])
    relation = spec.relation
    if relation is None:
        return True
    return all(
        relation.name in relations_between(subject, reference)
        for subject in matched[relation.subject]
        for reference in matched[relation.reference]
    )


def score(image: Image.Image, spec: Spec) -> bool:
    """Whether `image` shows what `spec` asks for."""
    return score_detections(detect(image), spec)
