"""GPU health: XID and GPU-state classification into the node's health report (see subsystem.py)."""
