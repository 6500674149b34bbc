"""Small servers the lab runs inside host namespaces (one process per host: `python -m gateway.labhosts`)."""
