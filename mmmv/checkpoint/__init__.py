"""Checkpoint utilities: safe loading on torch >= 2.6 (no ``weights_only=False``) and mmengine integration."""
from .safe_load import (CorruptCheckpointError, UnsafeCheckpointError, patch_mmengine, register_safe_globals,
                        safe_load)

__all__ = ['CorruptCheckpointError', 'UnsafeCheckpointError', 'patch_mmengine', 'register_safe_globals', 'safe_load']
