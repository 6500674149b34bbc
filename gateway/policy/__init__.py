"""Policy: TOML config -> validated model -> 三層 invariant checks -> `CompiledPolicy` snapshot.

    loaded = load_policy("configs/lab.toml")
    engine = Engine(loaded.compiled, loaded.limits)

Every problem of a file is reported at once (`ConfigError.errors`, str() one `FILE:LINE: reason`
per line). See docs/configuration.md for the keys and the invariants.
"""

from __future__ import annotations

from gateway.policy.errors import ConfigError, ConfigIssue
from gateway.policy.loader import LoadedPolicy, load_policy, load_policy_text
from gateway.policy.model import PolicyConfig

__all__ = ["ConfigError", "ConfigIssue", "LoadedPolicy", "PolicyConfig", "load_policy", "load_policy_text"]
