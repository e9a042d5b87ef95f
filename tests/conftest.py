"""Test-session setup. Without a CUDA GPU, Triton kernels run in triton's CPU interpreter: the variable must be set
before triton is first imported, which is why it is set here rather than in a test module."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')
