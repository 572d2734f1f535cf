"""What runs outside the platform cluster: the provider agent (`agent/`), the node provider (`node_provider/`),
and what both share: process/port ownership (`procs.py`); the platform's HTTP client is `dcluster`. Must
import on provider machines and sub-cluster heads: never imports the control plane or the API."""
