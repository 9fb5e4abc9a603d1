"""The procedural shapes world: scenes of flat colored shapes on a plain light background, placed
on a 4-pixel grid so that objects never touch and spatial relations are unambiguous.

Why plain and gridded: a VQ turns background tint, gradient and pixel noise, and every sub-patch
offset of an edge, into different codes, and the language model must then spend its capacity on
that noise. With one background and two edge phases per patch there are far fewer distinct
patches to learn. (The renderer and the analyzer still handle textured backgrounds; `Background`
describes both.)

Coordinates are pixels with the origin at the top-left; an object's `center` is the center of its
axis-aligned bounding box of side `size` (triangles point up and fill that box's base).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from lumina_mgpt.errors import DataError, FormatError
from lumina_mgpt.shapes.captions import sample_spec
from lumina_mgpt.shapes.spec import COLORS, Spec

# (width, height) of the canvases the small model trains and is evaluated on.
# The buckets of a 64 px target at the 16 px indicator step of the embedded model's layout
# (formats.bucket_sizes(64, step=16)) that fit the world's objects: square, 5:3 and 3:5.
CANVAS_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (80, 48), (48, 80))
SUPERSAMPLE = 4  # anti-aliasing: draw at 4x and average down
# Geometry at the 64x64 reference scale; canvases whose short side exceeds 64 scale it up.
GRID = 4  # object boxes start and end on multiples of this many pixels (at the 64x64 scale)
SIZE_RANGE_BY_COUNT = {1: (20, 28), 2: (16, 24), 3: (16, 20), 4: (16, 16)}  # multiples of GRID
EDGE_MARGIN = 4  # free pixels between an object and the canvas border
OBJECT_GAP = 6  # free pixels between two objects' boxes, so blur never merges them
RELATION_SLOPE = 0.4  # a relation's cross-axis offset is at most this fraction of its main offset
PLACEMENT_ATTEMPTS = 200


@dataclass(frozen=True)
class Background:
    """A light neutral base color with a linear brightness gradient and mild pixel noise."""

    color: tuple[int, int, int]
    gradient: tuple[float, float]  # brightness change across the full width / height
    noise_std: float
    noise_seed: int


@dataclass(frozen=True)
class SceneObject:
    """One flat shape: `size` is the side of its square bounding box, centered at `center`."""

    shape: str
    color: str
    center: tuple[float, float]
    size: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom), right/bottom exclusive."""
        half = self.size / 2
        x, y = self.center
        return (x - half, y - half, x + half, y + half)


@dataclass(frozen=True)
class Scene:
    """Everything needed to render a canvas: its size, its objects and its background."""

    width: int
    height: int
    objects: tuple[SceneObject, ...]
    background: Background


def check_canvas_size(width: int, height: int) -> None:
    """Canvases are multiples of 16 both ways (VQ patch grids) and at least 48 pixels."""
    if width % 16 or height % 16 or min(width, height) < 48:
        raise FormatError(
            f"canvas {width}x{height} is not supported; accepted: multiples of 16 of at least 48 "
            f"pixels each way (trained sizes: {', '.join(f'{w}x{h}' for w, h in CANVAS_SIZES)})"
        )


def geometry_scale(width: int, height: int) -> float:
    """How much larger than the 64x64 reference this canvas's objects and gaps are."""
    return max(1.0, min(width, height) / 64.0)


PLAIN_BACKGROUND = Background((224, 224, 224), (0.0, 0.0), 0.0, 0)


def background_pixels(background: Background, width: int, height: int) -> np.ndarray:
    """The background as a uint8 (height, width, 3) array."""
    xs = np.linspace(-0.5, 0.5, width)[None, :]
    ys = np.linspace(-0.5, 0.5, height)[:, None]
    shade = background.gradient[0] * xs + background.gradient[1] * ys
    noise = np.random.default_rng(background.noise_seed).normal(
        0.0, background.noise_std, size=(height, width, 1)
    )
    base = np.asarray(background.color, dtype=np.float64)[None, None, :]
    pixels = base + shade[..., None] + noise
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, fill: int | tuple[int, ...]) -> None:
    left, top, right, bottom = (v * SUPERSAMPLE for v in obj.box)
    last_x, last_y = right - 1, bottom - 1  # PIL boxes include their last pixel
    if obj.shape == "circle":
        draw.ellipse((left, top, last_x, last_y), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((left, top, last_x, last_y), fill=fill)
    else:
        apex = ((left + right) / 2 - 0.5, top)
        draw.polygon((apex, (left, last_y), (last_x, last_y)), fill=fill)


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of exactly scene.width x scene.height, anti-aliased."""
    check_canvas_size(scene.width, scene.height)
    base = Image.fromarray(background_pixels(scene.background, scene.width, scene.height))
    big_size = (scene.width * SUPERSAMPLE, scene.height * SUPERSAMPLE)
    # Upscaling a flat-per-pixel background with NEAREST and averaging back with BOX leaves it
    # unchanged, so only object edges are blended.
    canvas = base.resize(big_size, Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw_object(draw, obj, COLORS[obj.color])
    return canvas.resize((scene.width, scene.height), Image.Resampling.BOX)


def render_labels(scene: Scene) -> np.ndarray:
    """(height, width) int array: 0 for background, i + 1 where pixel centers fall in object i."""
    big_size = (scene.width * SUPERSAMPLE, scene.height * SUPERSAMPLE)
    canvas = Image.new("L", big_size, 0)
    draw = ImageDraw.Draw(canvas)
    for index, obj in enumerate(scene.objects):
        _draw_object(draw, obj, index + 1)
    offset = SUPERSAMPLE // 2
    return np.asarray(canvas)[offset::SUPERSAMPLE, offset::SUPERSAMPLE].astype(np.int64)


def relation_holds_clearly(
    dx: np.ndarray, dy: np.ndarray, reach: np.ndarray | float, name: str, gap: float
) -> np.ndarray:
    """Whether a subject offset by (dx, dy) from its reference is `name` it, with a clear gap.

    `reach` is the half-sum of the two sizes; the cross-axis offset must stay small relative to
    the main one so that no second relation could be read into the layout.
    """
    main, cross = {
        "left of": (-dx, dy),
        "right of": (dx, dy),
        "above": (-dy, dx),
        "below": (dy, dx),
    }[name]
    return (main - reach >= gap) & (np.abs(cross) <= RELATION_SLOPE * main)


def place_objects(
    rng: np.random.Generator,
    items: list[tuple[str, str]],
    width: int,
    height: int,
    relation: tuple[int, str, int] | None = None,
) -> Scene:
    """A scene with the (shape, color) `items` at random non-touching positions.

    Objects are placed one at a time, each uniformly among the positions still free.
    `relation` (subject index, name, reference index) is made to hold clearly. Sizes shrink to the
    smallest allowed after failed attempts, which always fit on the supported canvases.
    """
    check_canvas_size(width, height)
    if not 1 <= len(items) <= 4:
        raise DataError(f"a scene holds 1 to 4 objects, not {len(items)}")
    scale = geometry_scale(width, height)
    grid = int(round(GRID * scale))
    low, high = (v // GRID for v in SIZE_RANGE_BY_COUNT[len(items)])  # in grid units
    for attempt in range(PLACEMENT_ATTEMPTS):
        size_high = high if attempt < PLACEMENT_ATTEMPTS // 2 else low
        sizes = [grid * int(rng.integers(low, size_high + 1)) for _ in items]
        objects = _place_sequentially(rng, items, sizes, width, height, scale, relation)
        if objects is not None:
            return Scene(width, height, tuple(objects), PLAIN_BACKGROUND)
    raise DataError(f"could not place {len(items)} objects on a {width}x{height} canvas")


def free_centers(
    size: int,
    placed: list[SceneObject],
    width: int,
    height: int,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Centers (x, y arrays) of grid-aligned boxes of `size` that keep the margins and gaps to `placed`."""
    grid = int(round(GRID * scale))
    margin = int(np.ceil(EDGE_MARGIN * scale))
    first = -(-margin // grid) * grid
    lefts = np.arange(first, width - margin - size + 1, grid)
    tops = np.arange(first, height - margin - size + 1, grid)
    xs, ys = np.meshgrid(lefts + size / 2, tops + size / 2)
    xs, ys = xs.ravel(), ys.ravel()
    free = np.ones(xs.shape, dtype=bool)
    for other in placed:
        distance = np.maximum(np.abs(xs - other.center[0]), np.abs(ys - other.center[1]))
        free &= distance - (size + other.size) / 2 >= OBJECT_GAP * scale
    return xs[free], ys[free]


def _place_sequentially(
    rng: np.random.Generator,
    items: list[tuple[str, str]],
    sizes: list[int],
    width: int,
    height: int,
    scale: float,
    relation: tuple[int, str, int] | None,
) -> list[SceneObject] | None:
    placed: list[SceneObject] = []
    for index, ((shape, color), size) in enumerate(zip(items, sizes)):
        xs, ys = free_centers(size, placed, width, height, scale)
        if relation is not None and index == max(relation[0], relation[2]):
            subject, name, reference = relation
            other = placed[min(subject, reference)]
            reach = (size + other.size) / 2
            dx, dy = xs - other.center[0], ys - other.center[1]
            if index == reference:  # the new object is the reference: flip the offset
                dx, dy = -dx, -dy
            keep = relation_holds_clearly(dx, dy, reach, name, OBJECT_GAP * scale)
            xs, ys = xs[keep], ys[keep]
        if xs.size == 0:
            return None
        choice = int(rng.integers(xs.size))
        placed.append(SceneObject(shape, color, (float(xs[choice]), float(ys[choice])), size))
    return placed


def scene_from_spec(rng: np.random.Generator, spec: Spec, width: int, height: int) -> Scene:
    """A scene that satisfies `spec` exactly: its groups' objects and nothing else.

    Unnamed colors are drawn at random; the position relation, if any, holds clearly.
    """
    items: list[tuple[str, str]] = []
    first_index = []
    palette = list(COLORS)
    for group in spec.groups:
        first_index.append(len(items))
        for _ in range(group.count):
            items.append((group.shape, group.color or palette[int(rng.integers(len(palette)))]))
    relation = None
    if spec.relation is not None:
        relation = (
            first_index[spec.relation.subject],
            spec.relation.name,
            first_index[spec.relation.reference],
        )
    return place_objects(rng, items, width, height, relation)


def sample_scene(rng: np.random.Generator, width: int, height: int, category: str) -> Scene:
    """A random scene of one of GenEval's categories (its caption is not kept)."""
    return scene_from_spec(rng, sample_spec(rng, category), width, height)
