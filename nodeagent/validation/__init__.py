"""The one owner of the GPU Operator's validation status files (driver-ready, toolkit-ready, mig-ready)."""
