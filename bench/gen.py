#!/usr/bin/env python3
"""Write the benchmark's mixed lab capture: bench/gen.py OUT.pcap [--packets N --flows F --seed S]."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.synth import main

if __name__ == "__main__":
    sys.exit(main(["--bench", *sys.argv[1:]]))
