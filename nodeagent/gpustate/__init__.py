"""The GPU-state owner (``GpuState``) and what subsystems declare to it (``SamplingNeeds``)."""

from nodeagent.gpustate.needs import Delivery, Registration, SamplingNeeds
from nodeagent.gpustate.owner import DEFAULT_REFRESH_S, GpuState

__all__ = ["DEFAULT_REFRESH_S", "Delivery", "GpuState", "Registration", "SamplingNeeds"]
