"""Node labels: GFD label computation and its publishers (NFD file, Node, NodeFeature); the Node as control surface."""
