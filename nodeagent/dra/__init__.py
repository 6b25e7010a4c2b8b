"""The DRA kubelet plugin (``gpu.nvidia.com``): GPUs and MIG devices allocatable through resource.k8s.io."""
