"""Sequence operators used by the mmmv backbones."""
from .selective_scan import selective_scan, selective_scan_ref

__all__ = ['selective_scan', 'selective_scan_ref']
