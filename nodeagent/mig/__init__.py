"""MIG partitioning: mig-parted-compatible configs, a pure placement-aware planner, its executor, commands."""
