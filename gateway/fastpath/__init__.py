"""The per-packet engine: the compiled Cython fast path, or the pure-Python reference.

`LGWAN_GATEWAY_PURE_PYTHON=1` selects the reference; otherwise the compiled module is used and a
missing build is an error (silently running 30x slower is not a fallback an operator wants).
"""

from __future__ import annotations

import os

from gateway.fastpath import reference

IMPLEMENTATION: str

if os.environ.get("LGWAN_GATEWAY_PURE_PYTHON") == "1":
    Engine = reference.Engine
    scan_pcap_records = reference.scan_pcap_records
    IMPLEMENTATION = "python"
else:
    try:
        from gateway import _fastpath
    except ImportError as exc:  # pragma: no cover - only on a broken install
        raise ImportError(
            "gateway._fastpath (the Cython fast path) is not built: reinstall with `pip install .` "
            "or set LGWAN_GATEWAY_PURE_PYTHON=1 to run the pure-Python reference"
        ) from exc
    Engine = _fastpath.Engine  # type: ignore[misc,assignment]
    scan_pcap_records = _fastpath.scan_pcap_records
    IMPLEMENTATION = "cython"

__all__ = ["IMPLEMENTATION", "Engine", "scan_pcap_records"]
