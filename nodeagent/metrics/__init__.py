"""The metrics subsystem: DCGM-style GPU metrics from NVML, served from a cache (see subsystem.py)."""
