"""Discrete Darcy-flow operators as backend kernels (forward kernels; adjoints beside them)."""
