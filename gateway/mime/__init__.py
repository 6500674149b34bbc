"""Streaming MIME parsing for inline mail sanitization (see docs/mime.md)."""

from gateway.mime.events import (
    Boundary,
    ContentType,
    Defect,
    Epilogue,
    Event,
    LimitExceeded,
    Limits,
    MessageEnd,
    MimeError,
    MimeUsageError,
    PartData,
    PartEnd,
    PartStart,
    Preamble,
)
from gateway.mime.names import DecodedName, check_name, extension_matches, extract_names
from gateway.mime.parser import HeadCollector, MimeParser

__all__ = [
    "Boundary",
    "ContentType",
    "DecodedName",
    "Defect",
    "Epilogue",
    "Event",
    "HeadCollector",
    "LimitExceeded",
    "Limits",
    "MessageEnd",
    "MimeError",
    "MimeParser",
    "MimeUsageError",
    "PartData",
    "PartEnd",
    "PartStart",
    "Preamble",
    "check_name",
    "extension_matches",
    "extract_names",
]
