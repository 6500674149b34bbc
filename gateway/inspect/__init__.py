"""Inline mail inspection: the sans-I/O MailInspector and its replay/live adapters."""

from gateway.inspect.commands import Command, Drop, Forward, Inject, Log, Quarantine
from gateway.inspect.mail import FlowContext, InspectConfig, MailInspector

__all__ = ["Command", "Drop", "FlowContext", "Forward", "Inject", "InspectConfig", "Log", "MailInspector", "Quarantine"]
