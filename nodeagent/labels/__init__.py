"""Node labels: GFD-compatible label computation and its publishers (NFD file, Node, NodeFeature)."""
