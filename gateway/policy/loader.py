"""Read, validate, check and compile a policy file; report every problem as `FILE:LINE: reason`."""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gateway.fastpath.common import CompiledPolicy, Limits
from gateway.policy.checks import Checker
from gateway.policy.compiler import compile_limits, compile_policy
from gateway.policy.errors import ConfigError, ConfigIssue
from gateway.policy.locate import Locator
from gateway.policy.locate import Path as KeyPath
from gateway.policy.model import (
    DaemonSection,
    GatewaySection,
    LimitsSection,
    PolicyConfig,
    Profile,
    Rule,
    Timeouts,
    Zone,
    field_keys,
    metrics_address_problem,
)


@dataclass(frozen=True)
class LoadedPolicy:
    config: PolicyConfig
    compiled: CompiledPolicy
    limits: Limits
    notes: list[str] = field(default_factory=list)  # `FILE:LINE: note: ...` / `...: warning: ...`

    @property
    def daemon(self) -> DaemonSection:
        """The [daemon] settings (defaults when the file has none)."""
        return self.config.daemon


def load_policy(path: str | Path, generation: int = 1) -> LoadedPolicy:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(name, None, f"cannot read policy file: {exc}")]) from None
    return load_policy_text(text, name, generation)


def load_policy_text(text: str, name: str = "<policy>", generation: int = 1) -> LoadedPolicy:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_issue(name, exc, text)]) from None
    loc = Locator(text)

    issues: list[ConfigIssue] = []
    config: PolicyConfig | None = None
    try:
        config = PolicyConfig.model_validate(raw)
    except ValidationError as exc:
        issues.extend(ConfigIssue(name, loc.line(_key_path(e["loc"])), _message(e, raw)) for e in exc.errors())

    if config is not None:
        checker = Checker(
            name, loc, config.gateway, list(enumerate(config.zones)), list(enumerate(config.rules)),
            dict(config.profiles), set(), set(), set(),
        )  # fmt: skip
    else:
        checker = _salvage(name, loc, raw)
    analysis = checker.run()
    issues.extend(analysis.issues)
    daemon_notes: list[ConfigIssue] = []
    daemon = config.daemon if config is not None else _salvage_daemon(raw)
    if daemon is not None:
        issues.extend(_check_daemon(name, loc, daemon, daemon_notes))
    if issues or config is None:
        raise ConfigError(sorted(issues, key=lambda i: i.line or 0))
    compiled = compile_policy(config, analysis.matches, name, generation)
    notes = [str(n) for n in sorted(analysis.notes + daemon_notes, key=lambda i: i.line or 0)]
    return LoadedPolicy(config=config, compiled=compiled, limits=compile_limits(config.limits), notes=notes)


def _salvage_daemon(raw: dict[str, Any]) -> DaemonSection | None:
    """[daemon] on its own, when the document as a whole failed validation; keys with errors (already
    reported) fall back to their defaults, so the relations between the others are still checked."""
    section = raw.get("daemon", {})
    if not isinstance(section, dict):
        return None
    try:
        return DaemonSection.model_validate(section)
    except ValidationError as exc:
        bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
    try:
        return DaemonSection.model_validate({k: v for k, v in section.items() if k not in bad})
    except ValidationError:
        return None


def _check_daemon(name: str, loc: Locator, d: DaemonSection, notes: list[ConfigIssue]) -> list[ConfigIssue]:
    """Relations between [daemon] keys (each key alone is the model's job)."""
    issues = []
    if d.queue + d.workers - 1 > 65535:
        issues.append(
            ConfigIssue(
                name,
                loc.line(("daemon", "workers")),
                f"daemon.workers: queues {d.queue}..{d.queue + d.workers - 1} run past the last NFQUEUE number 65535",
            )
        )
    problem = metrics_address_problem(d.metrics_address, d.metrics_allow_remote)
    if problem is not None and d.metrics_port:
        issues.append(ConfigIssue(name, loc.line(("daemon", "metrics_address")), f"daemon.metrics_address: {problem}"))
    elif d.metrics_port and metrics_address_problem(d.metrics_address, False) is not None:
        notes.append(
            ConfigIssue(
                name,
                loc.line(("daemon", "metrics_address")),
                f"warning: metrics_allow_remote: the metrics endpoint {d.metrics_address}:{d.metrics_port} "
                "answers anyone who can reach it, without authentication",
            )
        )
    return issues


def _syntax_issue(name: str, exc: tomllib.TOMLDecodeError, text: str) -> ConfigIssue:
    # Python 3.11's TOMLDecodeError has no lineno attribute; the position is in the message
    msg = str(exc)
    m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    if m:
        return ConfigIssue(name, int(m.group(1)), f"TOML syntax: {msg[: m.start()].strip()} (column {m.group(2)})")
    # "(at end of document)": point at the last line
    return ConfigIssue(name, max(1, len(text.splitlines())), f"TOML syntax: {msg}")


def _salvage(name: str, loc: Locator, raw: dict[str, Any]) -> Checker:
    """The document failed validation: still check what did validate, item by item, so the
    operator sees the cross-rule and 三層 problems in the same run as the schema errors."""

    def ok(model: type[BaseModel], value: object, droppable: set[str] | None = None) -> tuple[Any, bool]:
        """(model or None, salvaged). With `droppable`, retry once without the offending keys if
        every error is on such a key: the item still takes part in the cross checks."""
        try:
            return model.model_validate(value), False
        except ValidationError as exc:
            if droppable is None or not isinstance(value, dict):
                return None, False
            bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
            if any(e["type"] == "missing" or not e["loc"] for e in exc.errors()) or not bad <= droppable | set(value):
                return None, False
            if bad & set(field_keys(model)) - droppable:
                return None, False
            try:
                return model.model_validate({k: v for k, v in value.items() if k not in bad}), True
            except ValidationError:
                return None, False

    gateway, _ = ok(GatewaySection, raw.get("gateway"))
    zones: list[tuple[int, Zone]] = []
    broken_zones: set[str] = set()
    raw_zones = raw.get("zones")
    # a zone whose optional keys are bad is still a zone (name, tier, what validated): keeping it
    # avoids "unknown zone" noise and still runs the tier checks of rules that use it
    zone_optional = set(field_keys(Zone)) - {"name", "tier"}
    for i, z in enumerate(raw_zones if isinstance(raw_zones, list) else []):
        model, _ = ok(Zone, z, zone_optional | (set(z) - set(field_keys(Zone)) if isinstance(z, dict) else set()))
        if model is not None:
            zones.append((i, model))
        elif isinstance(z, dict) and isinstance(z.get("name"), str):
            broken_zones.add(z["name"])
    profiles: dict[str, Profile] = {}
    broken_profiles: set[str] = set()
    raw_profiles = raw.get("profiles")
    for pname, p in (raw_profiles if isinstance(raw_profiles, dict) else {}).items():
        model, _ = ok(Profile, p)
        if model is not None and re.fullmatch(r"[A-Za-z0-9._-]+", pname):
            profiles[pname] = model
        else:
            broken_profiles.add(pname)
    rules: list[tuple[int, Rule]] = []
    broken_ids: set[str] = set()
    broken_refs: list[tuple[int, str, str, object]] = []
    salvaged: set[int] = set()
    raw_rules = raw.get("rules")
    for i, r in enumerate(raw_rules if isinstance(raw_rules, list) else []):
        # only unknown keys may be dropped from a rule: dropping a bad dst or port would widen it
        unknown = set(r) - set(field_keys(Rule)) if isinstance(r, dict) else set()
        model, was_salvaged = ok(Rule, r, unknown)
        if model is not None:
            rules.append((i, model))
            if was_salvaged:
                salvaged.add(i)
        elif isinstance(r, dict):
            if isinstance(r.get("id"), str):
                broken_ids.add(r["id"])
            label = r["id"] if isinstance(r.get("id"), str) else f"rules[{i}]"
            broken_refs += [(i, label, key, r[key]) for key in ("from", "to") if key in r]
    checker = Checker(name, loc, gateway, zones, rules, profiles, broken_zones, broken_profiles, broken_ids)
    checker.zones_known = isinstance(raw_zones, list)
    checker.salvaged_rules = salvaged
    checker.broken_refs = broken_refs
    return checker


def _key_path(loc: tuple[int | str, ...]) -> KeyPath:
    return tuple(loc)


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model whose table `loc` points into (for "did you mean" on unknown keys)."""
    if not loc:
        return PolicyConfig
    head, rest = loc[0], loc[1:]
    if head in ("zones", "rules") and len(rest) == 1:
        return Zone if head == "zones" else Rule
    if head == "gateway" and not rest:
        return GatewaySection
    if head == "daemon" and not rest:
        return DaemonSection
    if head == "limits":
        return LimitsSection if not rest else Timeouts if rest == ("timeouts",) else None
    return None


def _where(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """A readable name for a config path: `rule "x": dst_ports[1]`, `zone "lgwan": networks[0]`."""
    parts = list(loc)
    prefix = ""
    if len(parts) >= 2 and parts[0] in ("zones", "rules") and isinstance(parts[1], int):
        items = raw.get(str(parts[0]))
        item = items[parts[1]] if isinstance(items, list) and parts[1] < len(items) else None
        key = "name" if parts[0] == "zones" else "id"
        label = item.get(key) if isinstance(item, dict) else None
        kind = "zone" if parts[0] == "zones" else "rule"
        prefix = f'{kind} "{label}"' if isinstance(label, str) else f"{parts[0]}[{parts[1]}]"
        parts = parts[2:]
    elif len(parts) >= 2 and parts[0] == "profiles":
        prefix = f'profile "{parts[1]}"'
        parts = parts[2:]
    path = ""
    for p in parts:
        path += f"[{p}]" if isinstance(p, int) else (f".{p}" if path else str(p))
    if prefix and path:
        return f"{prefix}: {path}"
    return prefix or path or "(top level)"


def _message(err: ErrorDetails, raw: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        hint = ""
        if model is not None:
            close = difflib.get_close_matches(str(loc[-1]), field_keys(model), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
        return f'{_where(loc[:-1], raw)}: unknown key "{loc[-1]}"{hint}'
    if kind == "missing":
        return f'{_where(loc[:-1], raw)}: missing required key "{loc[-1]}"'
    msg = err["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif msg.startswith("Input should be"):
        msg = "must be" + msg[len("Input should be") :] + f", got {err['input']!r}"
    elif kind == "string_pattern_mismatch":
        msg = f"{err['input']!r}: names may use only letters, digits, '.', '_' and '-'"
    return f"{_where(loc, raw)}: {msg}"
