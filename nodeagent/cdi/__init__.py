"""CDI spec generation for the NVIDIA GPUs of the node."""
