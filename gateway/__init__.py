"""lgwan-gateway: packet-level enforcement of 三層の対策 for local-government networks."""

__version__ = "0.1.0"
