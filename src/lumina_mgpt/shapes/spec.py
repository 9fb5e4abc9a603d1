"""What a caption asks for: the structured spec that the analyzer checks an image against.

A spec lists object groups (shape, optional color, count) and at most one spatial relation between
two groups. It mirrors GenEval's metadata: groups need at least `count` matching objects, or
exactly `count` when `exact` is set (the counting category).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lumina_mgpt.errors import DataError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Named palette (RGB). Hues are at least ~27 degrees apart and black is the only dark color, so
# the analyzer can tell them apart after blur, JPEG chroma subsampling and mild color jitter.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 120, 20),
    "yellow": (235, 215, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "purple": (140, 60, 190),
    "black": (30, 30, 30),
}
# GenEval's six categories.
CATEGORIES: tuple[str, ...] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class ObjectGroup:
    """`count` objects of `shape`; `color` None means any color."""

    shape: str
    color: str | None = None
    count: int = 1
    exact: bool = False

    def matches(self, shape: str | None, color: str | None) -> bool:
        """Whether an object with this shape and color belongs to the group."""
        return shape == self.shape and (self.color is None or color == self.color)


@dataclass(frozen=True)
class Relation:
    """Group `subject` is `name` (one of RELATIONS) group `reference`; indices into Spec.groups."""

    subject: int
    name: str
    reference: int


@dataclass(frozen=True)
class Spec:
    """Everything a caption requires of an image."""

    category: str
    groups: tuple[ObjectGroup, ...]
    relation: Relation | None = None

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise DataError(
                f"unknown category {self.category!r}; accepted: {', '.join(CATEGORIES)}"
            )
        if not self.groups:
            raise DataError("a spec needs at least one object group")
        for group in self.groups:
            if group.shape not in SHAPES:
                raise DataError(f"unknown shape {group.shape!r}; accepted: {', '.join(SHAPES)}")
            if group.color is not None and group.color not in COLORS:
                raise DataError(f"unknown color {group.color!r}; accepted: {', '.join(COLORS)}")
            if not 1 <= group.count <= 4:
                raise DataError(f"object count {group.count} is out of range; accepted: 1 to 4")
        if self.relation is not None:
            indices = (self.relation.subject, self.relation.reference)
            if self.relation.name not in RELATIONS:
                raise DataError(
                    f"unknown relation {self.relation.name!r}; accepted: {', '.join(RELATIONS)}"
                )
            if len(set(indices)) != 2 or not all(0 <= i < len(self.groups) for i in indices):
                raise DataError(f"relation indices {indices} must name two different groups")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the inverse of `Spec.from_dict`)."""
        return {
            "category": self.category,
            "groups": [
                {"shape": g.shape, "color": g.color, "count": g.count, "exact": g.exact}
                for g in self.groups
            ],
            "relation": None
            if self.relation is None
            else {
                "subject": self.relation.subject,
                "name": self.relation.name,
                "reference": self.relation.reference,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spec:
        """Rebuild a spec from `to_dict` output, validating every field."""
        try:
            groups = tuple(
                ObjectGroup(g["shape"], g["color"], int(g["count"]), bool(g["exact"]))
                for g in data["groups"]
            )
            relation_data = data["relation"]
            relation = (
                None
                if relation_data is None
                else Relation(
                    int(relation_data["subject"]),
                    relation_data["name"],
                    int(relation_data["reference"]),
                )
            )
            return cls(data["category"], groups, relation)
        except (KeyError, TypeError) as error:
            raise DataError(f"malformed spec {data!r}: missing or bad field {error}") from error
