"""Sequence operators used by the mmmv backbones."""
from .cross_scan import cross_merge, cross_scan, cross_selective_scan
from .selective_scan import (get_scan_backend, scan_backend, selective_scan, selective_scan_ref, set_scan_backend,
                             triton_available)

__all__ = [
    'selective_scan', 'selective_scan_ref', 'scan_backend', 'set_scan_backend', 'get_scan_backend', 'triton_available',
    'cross_scan', 'cross_merge', 'cross_selective_scan'
]
