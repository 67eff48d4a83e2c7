"""The thresholds of the lung-nodule pipeline, checked at construction."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DetectionSettings"]


@dataclass(frozen=True)
class DetectionSettings:
    """The pipeline's thresholds; the defaults are the ones measured on the phantoms."""

    candidate_hu: float = -700.0  # between lung (-860) and ground glass (-550)
    opening_radius_mm: float = 1.6  # removes vessels and airway walls thinner than 3.2 mm
    min_diameter_mm: float = 3.5  # smaller candidates are not reported
    max_diameter_mm: float = 35.0  # larger ones are masses or vessels, not nodules
    max_elongation: float = 1.8  # principal-axis ratio above which a candidate is tubular
    max_compactness: float = 2.6  # volume / largest inscribed sphere above which likewise
    airway_air_fraction: float = 0.05  # enclosed air above which a candidate is an airway
    ground_glass_fraction: float = 0.25  # interior share of ground glass for part-solid
    min_isolation: float = 0.5  # share of its connected neighbourhood a nodule must be
    pleural_closing_mm: float = 10.0  # rolling-ball radius of the lung border (0: none)

    def __post_init__(self) -> None:
        if not -1000 < self.candidate_hu < 0:
            raise ValueError(
                f"candidate_hu must lie between air and water, got {self.candidate_hu}"
            )
        if self.opening_radius_mm <= 0 or self.pleural_closing_mm < 0:
            raise ValueError("opening_radius_mm must be > 0 and pleural_closing_mm >= 0")
        if not 0 < self.min_diameter_mm < self.max_diameter_mm:
            raise ValueError("need 0 < min_diameter_mm < max_diameter_mm")
        for name in ("airway_air_fraction", "ground_glass_fraction", "min_isolation"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a fraction in [0, 1]")
