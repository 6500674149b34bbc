"""Adapters' I/O: capture files (pcap, pcapng) and the JSON-lines event log."""
