"""Test-session setup. Without a CUDA GPU, Triton kernels run in triton's CPU interpreter: the variable must be set
before triton is first imported, which is why it is set here rather than in a test module."""
import os

import pytest
import torch
from tool_loading import load_tool

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture(scope='session')
def probe_loss():
    """tools/analysis/compile_gradients.py's `probe_loss`: each output against a fixed random map. Gradient checks
    use it rather than the outputs' mean square, which the backbones' output LayerNorms make constant (so that its
    gradient behind the norms is rounding noise, and comparing it compares noise)."""
    return load_tool('analysis/compile_gradients.py').probe_loss
