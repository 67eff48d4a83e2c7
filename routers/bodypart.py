"""Body-part normalisation: one canonical region from the many ways devices label anatomy.

BodyPartExamined is unreliable (absent, empty, free text, other languages, invalid bytes), so
the region comes from the first source that names one: BodyPartExamined, then
AnatomicRegionSequence codes, then words in SeriesDescription, ProtocolName and
StudyDescription. The synonym table is data (``body_parts.yaml``) a site extends in
routes.yaml. Nothing here raises on odd input: what cannot be read is ``unknown``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path

import yaml

DEFAULT_TABLE_PATH = Path(__file__).with_name("body_parts.yaml")


class Region(StrEnum):
    CHEST = "chest"
    HEAD = "head"
    NECK = "neck"
    ABDOMEN = "abdomen"
    PELVIS = "pelvis"
    SPINE = "spine"
    EXTREMITY = "extremity"
    BREAST = "breast"
    WHOLE_BODY = "whole-body"
    UNKNOWN = "unknown"


class RegionSource(StrEnum):
    """Where a region came from; explain shows it so IT can see why a study matched."""

    BODY_PART_EXAMINED = "BodyPartExamined"
    ANATOMIC_REGION_CODE = "AnatomicRegionSequence"
    SERIES_DESCRIPTION = "SeriesDescription"
    PROTOCOL_NAME = "ProtocolName"
    STUDY_DESCRIPTION = "StudyDescription"
    NONE = "none"


TEXT_SOURCES = (
    RegionSource.SERIES_DESCRIPTION,
    RegionSource.PROTOCOL_NAME,
    RegionSource.STUDY_DESCRIPTION,
)

# Code String repertoire (PS3.5 6.2): upper-case letters, digits, space and underscore.
# Lower case is tolerated (devices write it); anything else makes the value unreadable.
_CS_CHARACTERS = re.compile(r"^[A-Za-z0-9 _]*$")
_SEPARATORS = r"[\s_\-^/.,:;]+"
_WORD = re.compile(r"[^\W\d_]+")  # a run of letters: digits and punctuation separate words


def _canonical(value: str) -> str:
    """Upper-case, NFC-composed, separators collapsed to one space."""
    text = unicodedata.normalize("NFC", value).upper()
    return re.sub(_SEPARATORS, " ", text).strip()


def _is_spaceless_script(word: str) -> bool:
    """CJK and similar scripts have no spaces between words: match them as substrings."""
    return any(ord(ch) >= 0x2E80 for ch in word)


@dataclass(frozen=True)
class RegionDecision:
    """The region of one series and the evidence for it."""

    region: Region
    source: RegionSource
    evidence: str = ""  # the value or word that decided it, for explain

    def describe(self) -> str:
        if self.region is Region.UNKNOWN:
            return f"unknown ({self.evidence})" if self.evidence else "unknown"
        return f"{self.region.value} (from {self.source.value} {self.evidence!r})"


@dataclass(frozen=True)
class BodyPartTable:
    """Synonyms and codes per region; build with ``default`` or ``extended``."""

    synonyms: Mapping[str, Region]  # canonical synonym -> region
    codes: Mapping[str, Region] = field(default_factory=dict)  # "SCHEME:VALUE" -> region

    @classmethod
    def from_mapping(cls, data: Mapping[str, Mapping[str, Iterable[str]]]) -> BodyPartTable:
        """Build from the YAML shape ``{region: {synonyms: [...], codes: [...]}}``."""
        return cls({}, {}).extended(data)

    @classmethod
    def default(cls) -> BodyPartTable:
        return _default_table()

    def extended(self, data: Mapping[str, Mapping[str, Iterable[str]]]) -> BodyPartTable:
        """A copy with a site's synonyms and codes added (later entries win on conflicts)."""
        synonyms = dict(self.synonyms)
        codes = dict(self.codes)
        for region_name, entry in data.items():
            region = Region(region_name)
            for synonym in entry.get("synonyms", ()):
                canonical = _canonical(str(synonym))
                if canonical:
                    synonyms[canonical] = region
            for code in entry.get("codes", ()):
                codes[_canonical_code(str(code))] = region
        return BodyPartTable(synonyms, codes)

    @cached_property
    def _phrases(self) -> tuple[int, tuple[tuple[str, Region], ...]]:
        """Longest synonym in words, and the synonyms of spaceless scripts."""
        longest = max((len(s.split(" ")) for s in self.synonyms), default=1)
        spaceless = tuple((s, r) for s, r in self.synonyms.items() if _is_spaceless_script(s))
        return longest, spaceless

    def _first_word(self, text: str) -> tuple[Region, str] | None:
        """The leftmost synonym in free text (longest at the same place), in O(words)."""
        canonical = unicodedata.normalize("NFC", text).upper()
        words = [(m.start(), m.group()) for m in _WORD.finditer(canonical)]
        longest, spaceless = self._phrases
        best: tuple[int, Region, str] | None = None
        for index, (start, _) in enumerate(words):
            for size in range(min(longest, len(words) - index), 0, -1):
                phrase = " ".join(w for _, w in words[index : index + size])
                for candidate in (phrase, phrase[:-1] if phrase.endswith("S") else None):
                    if candidate and candidate in self.synonyms:
                        best = (start, self.synonyms[candidate], candidate)
                        break
                if best is not None:
                    break
            if best is not None:
                break
        for synonym, region in spaceless:
            position = canonical.find(synonym)
            if position >= 0 and (best is None or position < best[0]):
                best = (position, region, synonym)
        return (best[1], best[2]) if best is not None else None

    def normalise(self, value: object) -> Region:
        """The region a BodyPartExamined value names; ``unknown`` for anything unreadable."""
        return self._from_body_part(value)[0]

    def _from_body_part(self, value: object) -> tuple[Region, str]:
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if not isinstance(value, str) or not value.strip():
            return Region.UNKNOWN, "BodyPartExamined absent or empty"
        canonical = _canonical(value)
        if canonical in self.synonyms:
            return self.synonyms[canonical], value
        if not _CS_CHARACTERS.match(value.strip()):
            return Region.UNKNOWN, f"BodyPartExamined {value!r} has invalid characters"
        found = self._first_word(value)
        if found is None:
            return Region.UNKNOWN, f"BodyPartExamined {value!r} is not a known body part"
        return found[0], value

    def region_of_code(self, scheme: object, value: object) -> Region | None:
        if not isinstance(scheme, str) or not isinstance(value, str):
            return None
        return self.codes.get(_canonical_code(f"{scheme}:{value}"))

    def decide(self, attributes: Mapping[str, object]) -> RegionDecision:
        """The region of one series from its attributes (see the module docstring's order)."""
        region, evidence = self._from_body_part(attributes.get("BodyPartExamined"))
        if region is not Region.UNKNOWN:
            return RegionDecision(region, RegionSource.BODY_PART_EXAMINED, evidence)
        why_unknown = evidence
        for scheme, code in _region_codes(attributes.get("AnatomicRegionSequence")):
            coded = self.region_of_code(scheme, code)
            if coded is not None:
                return RegionDecision(coded, RegionSource.ANATOMIC_REGION_CODE, f"{scheme}:{code}")
        for source in TEXT_SOURCES:
            text = attributes.get(source.value)
            if isinstance(text, (list, tuple)):
                text = " ".join(str(t) for t in text)
            if isinstance(text, str) and text.strip():
                found = self._first_word(text)
                if found is not None:
                    return RegionDecision(found[0], source, found[1])
        return RegionDecision(Region.UNKNOWN, RegionSource.NONE, why_unknown + "; no fallback")


def _canonical_code(code: str) -> str:
    scheme, _, value = code.partition(":")
    scheme = scheme.strip().upper()
    if scheme in ("SNM3", "SRT"):  # SNOMED-RT codes travel under either designator
        scheme = "SRT"
    if scheme in ("SCT", "SNOMED", "SNOMED-CT", "SNOMEDCT"):
        scheme = "SCT"
    return f"{scheme}:{value.strip().upper()}"


def _region_codes(sequence: object) -> Iterable[tuple[object, object]]:
    """(scheme, value) pairs from AnatomicRegionSequence as a list of item mappings."""
    if not isinstance(sequence, (list, tuple)):
        return ()
    pairs = []
    for item in sequence:
        if isinstance(item, Mapping):
            pairs.append((item.get("CodingSchemeDesignator"), item.get("CodeValue")))
    return pairs


def _default_table() -> BodyPartTable:
    global _DEFAULT
    if _DEFAULT is None:
        data = yaml.safe_load(DEFAULT_TABLE_PATH.read_text(encoding="utf-8"))
        _DEFAULT = BodyPartTable.from_mapping(data)
    return _DEFAULT


_DEFAULT: BodyPartTable | None = None
