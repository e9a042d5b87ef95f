"""Selective scan (Mamba S6): the public op, its backend switches and its float64 reference."""
from .interface import (get_scan_backend, resolve_backend, scan_backend, selective_scan, set_scan_backend,
                        triton_available)
from .naive import selective_scan_ref

__all__ = [
    'selective_scan', 'selective_scan_ref', 'scan_backend', 'set_scan_backend', 'get_scan_backend', 'resolve_backend',
    'triton_available'
]
