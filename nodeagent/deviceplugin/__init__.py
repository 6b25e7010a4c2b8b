"""The kubelet device plugin: GPUs and MIG devices allocatable by pods (``nvidia.com/gpu``, ``nvidia.com/mig-*``)."""

# The settings tree holds this package's section (``settings.py`` here, built with ``nodeagent.settings.opt``):
# load the tree first, so that importing the section on its own finds ``opt`` defined.
import nodeagent.settings  # noqa: F401
