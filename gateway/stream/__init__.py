"""Stream-level, sans-I/O layers: IP defragmentation (replay) and, later, TCP reassembly."""
