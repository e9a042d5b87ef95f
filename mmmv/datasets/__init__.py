"""Generated datasets: small, deterministic data sets that let configs run without downloads.

Each generator lives in its own module and writes a standard on-disk format (COCO for detection), so the
toolboxes' own dataset classes read it; add a new generator by adding a module and exporting it here.
"""
from .demo_shapes import DEMO_CLASSES, generate_demo_coco

__all__ = ['DEMO_CLASSES', 'generate_demo_coco']
