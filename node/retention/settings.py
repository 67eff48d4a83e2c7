"""``storage.retention`` in node.yaml: how long delivered studies and result copies stay."""

from __future__ import annotations

from pydantic import Field, model_validator

from node.config_fields import Section

DAY_S = 86_400.0


class RetentionSettings(Section):
    """On by default: a node is a relay, not an archive (the PACS keeps the originals), and a
    spool that only grows ends in every C-STORE refused. Only studies whose results were all
    delivered, or that no route matched, are ever deleted; 30 days leaves time to look back."""

    enabled: bool = Field(
        True, description="false keeps every study forever (the disk watermark then refuses)"
    )
    days: float = Field(
        30,
        gt=0,
        description="days after a study's last delivery (or, unrouted, its stability) "
        "before its spool files and rows are deleted",
    )
    results_days: float = Field(
        30,
        gt=0,
        description="days after delivery before a job's result copies (outputs/job-N) are "
        "deleted; never more than days: results go with their study at the latest",
    )
    interval_s: float = Field(3600, gt=0, description="seconds between age-based purges")
    emergency: bool = Field(
        True,
        description="below storage.min_free_mb, delete the oldest delivered studies "
        "regardless of age",
    )
    emergency_margin_mb: int = Field(
        1024, ge=0, description="an emergency purge frees until min_free_mb plus this is free"
    )
    free_check_s: float = Field(10, gt=0, description="seconds between free-disk checks")

    @model_validator(mode="after")
    def _results_not_longer(self) -> RetentionSettings:
        if self.results_days > self.days:
            raise ValueError(
                f"results_days ({self.results_days}) must not exceed days ({self.days}): "
                "result copies are deleted with their study; lower results_days or raise days"
            )
        return self

    @property
    def max_age_s(self) -> float:
        return self.days * DAY_S

    @property
    def results_max_age_s(self) -> float:
        return self.results_days * DAY_S
