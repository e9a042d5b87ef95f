"""Selective scan (Mamba S6): the public op and its float64 reference."""
from .interface import selective_scan
from .naive import selective_scan_ref

__all__ = ['selective_scan', 'selective_scan_ref']
