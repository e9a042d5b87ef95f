"""``import mmmv`` stays light: no torch._dynamo, no triton, no mmengine runner until they are used, and mmengine's
checkpoint loading is still made safe whenever it is imported, before or after mmmv."""
import importlib.util
import subprocess
import sys

import pytest


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def test_import_does_not_load_dynamo_triton_or_the_runner():
    out = _run('import sys, mmmv\n'
               'heavy = ("torch._dynamo", "triton", "torch._inductor", "mmengine.runner", "mmengine.hooks")\n'
               'print(sorted(name for name in heavy if name in sys.modules))')
    assert out == '[]'


def test_models_build_and_run_without_loading_dynamo_on_the_torch_backend():
    out = _run('import sys, torch\n'
               'from mmmv.models import MambaVision\n'
               'model = MambaVision(arch=dict(dim=16, in_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), '
               'window_size=(2, 2, 2, 2)), out_indices=(3, )).eval()\n'
               'model(torch.randn(1, 3, 64, 64))\n'
               'print("torch._dynamo" in sys.modules, "triton" in sys.modules)')
    assert out == 'False False'


def test_triton_available_is_marked_as_torch_compiler_would_mark_it():
    """`interface` marks `triton_available` by hand (torch.compiler.assume_constant_result would import dynamo):
    the mark must be the one that decorator sets in this torch."""
    out = _run('import torch\n'
               'from mmmv.ops.selective_scan.interface import triton_available\n'
               'def f(): return True\n'
               'marked = torch.compiler.assume_constant_result(f)\n'
               'new = {k: v for k, v in vars(marked).items()}\n'
               'print(new, {k: getattr(triton_available, k, None) for k in new})')
    marks, ours = out.split('} {')
    assert marks.startswith('{') and marks[1:] and marks[1:] == ours[:-1], out


@pytest.mark.skipif(importlib.util.find_spec('mmengine') is None, reason='needs mmengine')
@pytest.mark.parametrize('order', ['mmmv first', 'mmengine first'])
def test_mmengine_checkpoint_loading_is_patched_in_either_import_order(order):
    imports = ['import mmmv', 'from mmengine.runner import checkpoint']
    if order == 'mmengine first':
        imports.reverse()
    out = _run('\n'.join(imports) + '\n'
               'from mmengine.runner import checkpoint\n'
               'loaders = {checkpoint.CheckpointLoader._schemes[p].__module__ for p in ("", "http://", "pavi://")}\n'
               'print(sorted(loaders), checkpoint.load_from_local.__module__)')
    assert out == "['mmmv.checkpoint.safe_load'] mmmv.checkpoint.safe_load"
