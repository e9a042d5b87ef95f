"""Test-session setup. Without a CUDA GPU, Triton kernels run in triton's CPU interpreter: the variable must be set
before triton is first imported, which is why it is set here rather than in a test module."""
import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture(scope='session')
def probe_loss():
    """tools/analysis/compile_gradients.py's `probe_loss`: each output against a fixed random map. Gradient checks
    use it rather than the outputs' mean square, which the backbones' output LayerNorms make constant (so that its
    gradient behind the norms is rounding noise, and comparing it compares noise)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools', 'analysis',
                        'compile_gradients.py')
    spec = importlib.util.spec_from_file_location('compile_gradients', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.probe_loss
