"""Simulation: fake GPUs (gpus.py) from profiles (profiles.py, data/profiles/*.json, or a file written by
``nodeagent sim record``, record.py), a sandbox host tree (sandbox.py) and a fake modprobe (modprobe.py)."""
