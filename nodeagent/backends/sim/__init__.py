"""Simulation: fake GPUs, a sandbox host tree, fake modprobe."""
