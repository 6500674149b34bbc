"""Mail sanitization (無害化): true-type classification of MIME parts (docs/sanitize.md)."""

from gateway.sanitize.base import Finding
from gateway.sanitize.classify import CATEGORIES, Classification, Classifier
from gateway.sanitize.profile import MailProfile

__all__ = ["CATEGORIES", "Classification", "Classifier", "Finding", "MailProfile"]
