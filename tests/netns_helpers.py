"""A throwaway network namespace for tests that talk to the kernel's netfilter (root only)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest


@contextlib.contextmanager
def scratch_netns(tag: str, programs: tuple[str, ...]) -> Iterator[str]:
    """`lgw-TAG-xxxxxxxx`, deleted afterwards whatever happens. Without root or one of `programs`
    the test is skipped, except under CI, where that is an error (nothing may skip silently there)."""
    missing = [p for p in ("ip", *programs) if shutil.which(p) is None]
    if os.geteuid() != 0 or missing:
        why = f"needs root and {', '.join(('ip', *programs))}" + (
            f" (missing: {', '.join(missing)})" if missing else ""
        )
        if os.environ.get("CI"):
            raise RuntimeError(f"namespace test {why} in CI")
        pytest.skip(why)
    name = f"lgw-{tag}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ns_run(ns: str, argv: list[str], stdin: str | None) -> tuple[int, str, str]:
    """Run argv inside namespace `ns`: (exit status, stdout, stderr)."""
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def ns_runner(
    ns: str, error: type[Exception], rewrite: Callable[[str], str] | None = None
) -> Callable[[Sequence[str], str | None], str]:
    """A backend `runner` (gateway.io.iptables / nftables) that runs the tools inside `ns`; its
    failures raise `error` with the tool's stderr, as the backends' own runner does. `rewrite`
    changes the tool's input first (tests/test_nftables.py: a kernel gap)."""

    def run(argv: Sequence[str], stdin: str | None) -> str:
        if rewrite is not None and stdin is not None:
            stdin = rewrite(stdin)
        rc, out, err = ns_run(ns, list(argv), stdin)
        if rc:
            raise error(err)
        return out

    return run
