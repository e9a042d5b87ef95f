from .mambavision import ARCH_SETTINGS, MambaVision, MambaVisionClassifier

__all__ = ['ARCH_SETTINGS', 'MambaVision', 'MambaVisionClassifier']
