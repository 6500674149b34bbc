"""`[profiles.NAME]` with `kind = "smtp"`: what the mail sanitizer lets through and what it does
with the rest (docs/sanitize.md).

This module must stay light (pydantic only): gateway.policy.model imports it to validate profiles
at load time, so that a bad key or value is reported with FILE:LINE like any other config error.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MiB = 1 << 20

# Order = severity: the worst finding names a classification. Keep in sync with docs/sanitize.md.
CATEGORIES: tuple[str, ...] = (
    "executable",
    "script",
    "disk_image",
    "macro_office",
    "encrypted",
    "archive",
    "pdf_active",
    "html",
    "name_trick",
    "office",
    "pdf",
    "image",
    "text",
    "cad",
    "other",
    "too_large",
    "limit",
    "malware",
)
# A part that could not be inspected (or matched a virus signature) never passes, whatever the
# allowlist says: fail closed.
NEVER_ALLOWED = frozenset({"too_large", "limit", "malware"})
# The domain table's "pass" classes (docs/sanitize.md); archives pass when every member does.
DEFAULT_ALLOWED: tuple[str, ...] = ("archive", "office", "pdf", "image", "text", "cad")
# Default action per category when the profile's `actions` does not name it: a limit hit means
# the part was not fully inspected, so the message is refused (the sender gets a bounce).
DEFAULT_ACTIONS: dict[str, Literal["neutralize", "refuse"]] = {"limit": "refuse", "too_large": "refuse"}
# MIME defects where a client may see another structure than the gateway did (docs/mime.md).
DEFAULT_REFUSE_DEFECTS: tuple[str, ...] = (
    "near-delimiter",
    "missing-header-body-separator",
    "delimiter-after-close",
    "bare-cr",
    "duplicate-header",
    "duplicate-param",
    "encoded-container",
    "base64-data-after-padding",
)

_MIME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.+_-]*/(\*|[a-z0-9][a-z0-9.+_-]*)$")
Action = Literal["neutralize", "refuse"]


class MailProfile(BaseModel):
    """An inspect profile for SMTP. Every key is optional except `kind`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: Literal["smtp"]
    description: str = ""
    # allowlist: categories (CATEGORIES) and/or MIME types ("image/png", "image/*"); a MIME entry
    # only admits the clean type, never an active finding (an "application/pdf" entry does not
    # admit a PDF with JavaScript: list "pdf_active" for that)
    allowed_types: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED))
    # "remove": 無害化 mode (a), every attachment removed whatever its type
    attachments: Literal["inspect", "remove"] = "inspect"
    action: Action = "neutralize"
    actions: dict[str, Action] = Field(default_factory=dict)
    max_message_bytes: int = Field(default=25 * MiB, ge=1)
    max_part_bytes: int = Field(default=25 * MiB, ge=1)
    archive_max_depth: int = Field(default=3, ge=0, le=32)
    archive_max_ratio: int = Field(default=100, ge=1)
    archive_max_total_bytes: int = Field(default=100 * MiB, ge=0)
    archive_max_members: int = Field(default=1000, ge=0)
    max_name_bytes: int = Field(default=255, ge=1, le=65535)
    html_to_text: bool = True
    defang_links: bool = True
    refuse_on_defects: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSE_DEFECTS))
    yara_rules: str | None = None  # path of a rules file (source or compiled); off when unset
    clamd_socket: str | None = None  # clamd's unix socket; off when unset
    scan_timeout: float = Field(default=30.0, gt=0, le=600)
    head_bytes: int = Field(default=4096, ge=512, le=MiB)
    # read by other layers, declared here so that a typo is an error, not a silent default
    original_retention_days: int | None = Field(default=None, ge=1)  # quarantine review hold
    dlp_individual_number: Literal["off", "log", "block"] = "off"  # Individual Number DLP

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        """Short forms used in configs/example-municipality.toml: `html = "to_text"`,
        `links = "disable"`, `max_message_mb = 30`."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for short, long, mapping in (
            ("html", "html_to_text", {"to_text": True, "keep": False}),
            ("links", "defang_links", {"disable": True, "keep": False}),
        ):
            if short in out:
                value = out.pop(short)
                if long in out:
                    raise ValueError(f"give either {short!r} or {long!r}, not both")
                if not isinstance(value, str) or value not in mapping:
                    raise ValueError(f"{short} must be one of {', '.join(map(repr, mapping))}, got {value!r}")
                out[long] = mapping[value]
        if "max_message_mb" in out:
            mb = out.pop("max_message_mb")
            if "max_message_bytes" in out:
                raise ValueError("give either 'max_message_mb' or 'max_message_bytes', not both")
            if not isinstance(mb, int) or isinstance(mb, bool) or not 1 <= mb <= 1 << 20:
                raise ValueError(f"max_message_mb must be a whole number of MiB >= 1, got {mb!r}")
            out["max_message_bytes"] = mb * MiB
        return out

    @field_validator("allowed_types")
    @classmethod
    def _check_allowed(cls, v: list[str]) -> list[str]:
        for item in v:
            if item in NEVER_ALLOWED:
                raise ValueError(f"{item!r} can never be allowed: such a part was not (fully) inspected")
            if item not in CATEGORIES and not _MIME_PATTERN.match(item):
                raise ValueError(f"{item!r} is neither a category ({', '.join(CATEGORIES)}) nor a lower-case MIME type")
        return v

    @field_validator("actions")
    @classmethod
    def _check_actions(cls, v: dict[str, Action]) -> dict[str, Action]:
        for key in v:
            if key not in CATEGORIES:
                raise ValueError(f"unknown category {key!r} (categories: {', '.join(CATEGORIES)})")
        return v

    @field_validator("refuse_on_defects")
    @classmethod
    def _check_defects(cls, v: list[str]) -> list[str]:
        for item in v:
            if not re.fullmatch(r"[a-z0-9-]+", item):
                raise ValueError(f"{item!r} is not a MIME defect kind (see docs/mime.md)")
        return v

    def action_for(self, category: str) -> Action:
        """What happens to a removed part of `category`."""
        return self.actions.get(category) or DEFAULT_ACTIONS.get(category) or self.action

    @property
    def settings(self) -> dict[str, Any]:
        """Everything but kind/description (the compiled policy snapshot carries these)."""
        return self.model_dump(exclude={"kind", "description"})
