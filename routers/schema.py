"""The shape of routes.yaml, as pydantic models (and so as JSON Schema for editors).

These models check structure and types; what needs knowledge outside the file (DICOM
keywords, installed plugins, node.yaml's destinations) is checked by ``routers.check``,
which also turns every problem into ``file:line:column`` with a hint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from routers.bodypart import Region

ROUTE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
PLUGIN_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class Mode(StrEnum):
    """``shadow`` runs the plugin like production but sends only to shadow destinations."""

    PRODUCTION = "production"
    SHADOW = "shadow"


class Urgency(StrEnum):
    """How soon a route's jobs run: every executor claims urgent jobs first, background last.

    Stored as ``rank`` (0, 1, 2) in ``route_matches.urgency`` and ``jobs.urgency``.
    """

    URGENT = "urgent"
    NORMAL = "normal"
    BACKGROUND = "background"

    @property
    def rank(self) -> int:
        return _URGENCY_ORDER.index(self)

    @classmethod
    def of_rank(cls, rank: int) -> Urgency:
        """The urgency stored as ``rank``; an unknown rank (a newer node's) reads as normal."""
        return _URGENCY_ORDER[rank] if 0 <= rank < len(_URGENCY_ORDER) else cls.NORMAL


_URGENCY_ORDER = tuple(Urgency)


class Orientation(StrEnum):
    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"


class Prefer(StrEnum):
    """Which series wins when several pass the series filters."""

    THINNEST = "thinnest"
    MOST_INSTANCES = "most_instances"
    LATEST = "latest"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PluginRef(_Model):
    """A plugin to run, optionally pinned to one installed version."""

    plugin: str = Field(description="plugin name, e.g. ct-lung-nodule")
    version: str | None = Field(None, description="pinned version; empty = newest installed")

    @field_validator("plugin")
    @classmethod
    def _name(cls, value: str) -> str:
        if not PLUGIN_NAME_PATTERN.match(value):
            raise ValueError(
                f"plugin name {value!r} must be lower-case letters, digits, '.', '_' or '-'"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        """Accept ``name`` and ``name@version`` as well as the mapping form."""
        if isinstance(value, str):
            name, _, version = value.partition("@")
            return {"plugin": name.strip(), "version": version.strip() or None}
        return value

    def __str__(self) -> str:
        return f"{self.plugin}@{self.version}" if self.version else self.plugin


class SeriesSpec(_Model):
    """Which series of a matched study the plugins get (one per route)."""

    orientation: Orientation | None = Field(
        None, description="plane from ImageOrientationPatient; empty = any"
    )
    orientation_tolerance_deg: float = Field(
        20.0, ge=0, le=45, description="largest angle between the slice normal and the plane's axis"
    )
    slice_thickness_min: float | None = Field(None, ge=0, description="mm")
    slice_thickness_max: float | None = Field(None, gt=0, description="mm")
    min_instances: int = Field(
        1, ge=1, description="fewest images; each frame of a multi-frame instance counts"
    )
    max_instances: int | None = Field(None, ge=1)
    include_image_type: tuple[str, ...] = Field(
        (), description="ImageType must contain every one of these values"
    )
    exclude_image_type: tuple[str, ...] = Field(
        (), description="no instance's ImageType may contain any of these values"
    )
    include_sop_class: tuple[str, ...] = Field(
        (), description="every instance must have one of these SOP classes (name or UID)"
    )
    exclude_sop_class: tuple[str, ...] = Field(
        (), description="no instance may have one of these SOP classes (name or UID)"
    )
    description_regex: str | None = Field(
        None, description="SeriesDescription must match (search, case-insensitive)"
    )
    prefer: Prefer = Field(Prefer.MOST_INSTANCES, description="tie-break between passing series")

    @model_validator(mode="after")
    def _ranges(self) -> SeriesSpec:
        if (
            self.slice_thickness_min is not None
            and self.slice_thickness_max is not None
            and self.slice_thickness_min > self.slice_thickness_max
        ):
            raise ValueError("slice_thickness_min is larger than slice_thickness_max")
        if self.max_instances is not None and self.max_instances < self.min_instances:
            raise ValueError("max_instances is smaller than min_instances")
        return self


_SCALAR_SCHEMA: dict[str, Any] = {"type": ["string", "number", "boolean"]}
_OPERATORS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "equals": _SCALAR_SCHEMA,
        "in": {"type": "array", "items": _SCALAR_SCHEMA},
        "regex": {"type": "string"},
        "lt": {"type": "number"},
        "le": {"type": "number"},
        "gt": {"type": "number"},
        "ge": {"type": "number"},
        "exists": {"type": "boolean"},
        "not": {"type": "object"},
        "case_sensitive": {"type": "boolean"},
    },
}
WHEN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "Conditions that must all hold for a series of the study. Keys are DICOM keywords "
        "(Modality, ImageType, ...) or body_part (normalised region), calling_ae, called_ae, "
        "modality, instance_count; 'any' / 'all' take a list of condition mappings, 'not' one. "
        "A value is an equality test, a list means 'in', a mapping gives operators."
    ),
    "properties": {
        "any": {"type": "array", "items": {"type": "object"}},
        "all": {"type": "array", "items": {"type": "object"}},
        "not": {"type": "object"},
        "body_part": {"enum": [r.value for r in Region]},
    },
    "additionalProperties": {
        "anyOf": [_SCALAR_SCHEMA, {"type": "array", "items": _SCALAR_SCHEMA}, _OPERATORS_SCHEMA]
    },
}


_PLUGIN_REF_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "string",
            "pattern": r"^[a-z0-9][a-z0-9._-]*(@.+)?$",
            "description": "plugin name, or name@version to pin a version",
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["plugin"],
            "properties": {"plugin": {"type": "string"}, "version": {"type": "string"}},
        },
    ]
}


class RouteSpec(_Model):
    """One route: when a study matches, which series, which plugins, where results go."""

    name: str = Field(pattern=ROUTE_NAME_PATTERN)
    enabled: bool = True
    priority: int = Field(0, description="higher first; equal priorities keep file order")
    when: dict[str, Any] = Field(default_factory=dict, json_schema_extra=WHEN_SCHEMA)
    series: SeriesSpec = SeriesSpec()
    run: tuple[Annotated[PluginRef, WithJsonSchema(_PLUGIN_REF_SCHEMA)], ...] = Field(
        min_length=1, description="plugin or plugin@version"
    )
    send_to: tuple[str, ...] = Field((), description="destination names from node.yaml")
    mode: Mode = Mode.PRODUCTION
    urgency: Urgency = Field(
        Urgency.NORMAL,
        description="urgent jobs are claimed before normal ones, background ones last",
    )


class BodyPartEntry(_Model):
    """Site additions to the default synonym table for one region."""

    synonyms: tuple[str, ...] = ()
    codes: tuple[str, ...] = Field((), description='"SCHEME:VALUE", e.g. "SCT:51185008"')


class RoutesFile(_Model):
    """The whole of routes.yaml."""

    body_parts: dict[Region, BodyPartEntry] = Field(
        default_factory=dict, description="synonyms a site adds to the default table"
    )
    routes: tuple[RouteSpec, ...] = ()


def routes_json_schema() -> dict[str, Any]:
    schema = RoutesFile.model_json_schema(by_alias=True)
    schema["title"] = "ainode routes.yaml"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


@dataclass(frozen=True)
class Problem:
    """One thing wrong in routes.yaml, located by its path in the file's data.

    ``routers.check`` turns the path into ``line:column`` (of the key when ``at_key``,
    else of the value) for the message IT reads.
    """

    path: tuple[str | int, ...]
    message: str
    hint: str = ""
    at_key: bool = False
