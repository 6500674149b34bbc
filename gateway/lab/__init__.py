"""The namespace lab (docs/lab.md): the lab-facts.md topology in network namespaces, real servers, the daemon.

API for tests and scripts::

    with running_lab(config="configs/lab.toml", daemon=True, state_dir=tmp) as lab:
        run_probes(lab.prefix, [Probe("lgwan-terminal", "lgwan-asp", "tcp", 443)])
"""

from gateway.lab import netns
from gateway.lab.core import DEFAULT_CONFIG, DEFAULT_PREFIX, DEFAULT_STATE_DIR, DaemonUnavailable, Lab, running_lab
from gateway.lab.netns import LabError
from gateway.lab.probe import Probe, ProbeResult, run_probe, run_probes, smtp_client
from gateway.lab.topology import GATEWAY, HOSTS, HOSTS_BY_NAME, ZONES, Host, Zone

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_PREFIX",
    "DEFAULT_STATE_DIR",
    "GATEWAY",
    "HOSTS",
    "HOSTS_BY_NAME",
    "ZONES",
    "DaemonUnavailable",
    "Host",
    "Lab",
    "LabError",
    "Probe",
    "ProbeResult",
    "Zone",
    "netns",
    "run_probe",
    "run_probes",
    "running_lab",
    "smtp_client",
]
