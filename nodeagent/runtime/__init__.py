"""The container-runtime configuration subsystem (containerd, CRI-O, docker)."""
