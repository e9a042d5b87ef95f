"""What the Triton scan kernels cost on a GPU architecture, without a GPU: registers, spills, shared memory and
instruction counts of each kernel that a call launches, compiled for the target by Triton's own compiler.

Each call's kernels are captured from the launchers (`triton_backend.scan_forward` / `scan_backward` on empty CPU
tensors of the case's shapes, with the launch configuration a GPU of --sms SMs would get) and compiled with the
arguments specialised as Triton's JIT does (integers equal to 1 become constants, multiples of 16 and tensors get
the divisibility hint), so the code is the code that runs. Counts are of PTX instructions in the kernel's text (one
chunk iteration; loops are not unrolled), registers / stack / shared from the cubin.

    python tools/analysis/scan_kernel_resources.py                                   # the seven cases, fp32 + bf16
    python tools/analysis/scan_kernel_resources.py --cases vss-s1 --dtypes bfloat16 --dump DIR   # + ttgir/ptx
    python tools/analysis/scan_kernel_resources.py --cases vss-s1,vss-s3 --fused   # VM-UNet's fused 2D scan

--fused takes a VSS case's four directions as the fused four-direction scan of `cross_selective_scan` (batch / 4
maps of sqrt(L) x sqrt(L) tokens, Di = D channels) instead of four sequences in the batch.

Needs triton with its NVIDIA backend (the PyPI wheel: ptxas and cuobjdump are bundled); no GPU, no CUDA driver.
"""
import argparse
import math
import os
import os.path as osp
import re
import subprocess
import sys
from typing import Dict, List, Optional

import torch

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

from benchmark_selective_scan import GPU_CASES  # noqa: E402

DIRECTIONS = 4
KERNELS = ('_fwd_kernel', '_fwd_carry_kernel', '_bwd_kernel', '_bwd_carry_kernel')
POINTER_TYPES = {torch.float32: '*fp32', torch.bfloat16: '*bf16', torch.float16: '*fp16'}
COUNTED = {'ex2': r'\bex2\.', 'fma': r'\bfma\.', 'cvt': r'\bcvt\.', 'shfl': r'\bshfl\.', 'bar': r'\bbar\.sync',
           'ld.global': r'\bld\.global', 'st.global': r'\bst\.global', 'ld.shared': r'\bld\.shared',
           'st.shared': r'\bst\.shared'}


class _Capture:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` records the launch instead."""

    def __init__(self, fn, launches: list):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.fn, grid, args, kwargs))


def captured_launches(case, dtype: torch.dtype, sms: int, fused: bool = False) -> List[tuple]:
    """(kernel, grid, args, kwargs) of one forward + backward of `case` in `dtype` (u, delta, B, C; A, D and the
    bias float32, softplus on, as the benchmark), as launched on a GPU with `sms` SMs; `fused`: see the module
    docstring."""
    from mmmv.ops.selective_scan import triton_backend, triton_kernels
    launches = []
    batch, dim, length, state = case.batch, case.dim, case.length, case.state
    height = 0
    if fused:
        height, batch = math.isqrt(length), batch // DIRECTIONS
        if height * height != length or batch * DIRECTIONS != case.batch:
            raise SystemExit(f'--fused needs a case of square maps with 4 directions in the batch, not {case.name}')
        delta = torch.empty(batch, DIRECTIONS, dim, length, dtype=dtype)
        B, C = (torch.empty(batch, DIRECTIONS, state, length, dtype=dtype) for _ in range(2))
        A, D, bias = torch.empty(DIRECTIONS * dim, state), torch.empty(DIRECTIONS * dim), torch.empty(DIRECTIONS * dim)
    else:
        delta = torch.empty(batch, dim, length, dtype=dtype)
        B, C = (torch.empty(batch, state, length, dtype=dtype) for _ in range(2))
        A, D, bias = torch.empty(dim, state), torch.empty(dim), torch.empty(dim)
    u = torch.empty(batch, dim, length, dtype=dtype)
    launch_config = triton_backend.launch_config
    gpu = torch.device('cuda')
    saved = {name: getattr(triton_kernels, name) for name in KERNELS}
    saved_sms, saved_configs = triton_backend.multiprocessors, triton_backend._CONFIGS
    try:
        for name in KERNELS:
            setattr(triton_kernels, name, _Capture(saved[name], launches))
        triton_backend.multiprocessors = lambda device: sms
        triton_backend._CONFIGS = {}  # configurations for this GPU size only
        triton_backend.launch_config = lambda *a, **k: launch_config(*a[:5], gpu, *a[6:], **k)
        triton_backend._check_runnable, check = (lambda t: None), triton_backend._check_runnable
        try:
            _, _, states = triton_backend.scan_forward(u, delta, A, B, C, D, None, bias, True, False, height=height)
            triton_backend.scan_backward(torch.empty_like(u), None, u, delta, A, B, C, D, None, bias, states, True,
                                         height=height)
        finally:
            triton_backend._check_runnable = check
    finally:
        for name, fn in saved.items():
            setattr(triton_kernels, name, fn)
        triton_backend.multiprocessors, triton_backend._CONFIGS = saved_sms, saved_configs
        triton_backend.launch_config = launch_config
    return launches


def compile_launch(fn, args: tuple, kwargs: dict, capability: int):
    """The kernel compiled for sm_<capability> with `args` specialised as Triton's JIT specialises them."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource
    kwargs = dict(kwargs)
    options = dict(num_warps=kwargs.pop('num_warps', 4), enable_fp_fusion=kwargs.pop('enable_fp_fusion', True))
    signature, constants, attrs = {}, {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in kwargs:
            signature[name], constants[(index, )] = 'constexpr', kwargs[name]
            continue
        value = args[index]
        if isinstance(value, torch.Tensor):
            signature[name], attrs[(index, )] = POINTER_TYPES[value.dtype], [['tt.divisibility', 16]]
            continue
        kind, hint = native_specialize_impl(BaseBackend, int(value), False, True, True)
        if kind == 'constexpr':
            signature[name], constants[(index, )] = 'constexpr', int(value)
        else:
            signature[name] = kind
            if hint == 'D':
                attrs[(index, )] = [['tt.divisibility', 16]]
    source = ASTSource(fn, signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget('cuda', capability, 32), options=options)


def resources(compiled, scratch: str) -> Dict[str, int]:
    """Registers, stack and shared bytes (cuobjdump on the cubin) and PTX instruction counts of a compiled kernel."""
    import triton
    tool = osp.join(osp.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')
    path = osp.join(scratch, 'kernel.cubin')
    with open(path, 'wb') as f:
        f.write(compiled.asm['cubin'])
    usage = subprocess.run([tool, '--dump-resource-usage', path], capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r'(REG|STACK|SHARED):(\d+)', usage))
    result = {'regs': int(found.get('REG', -1)), 'stack': int(found.get('STACK', -1)),
              'shared': int(found.get('SHARED', -1))}
    ptx = compiled.asm['ptx']
    result.update({name: len(re.findall(pattern, ptx)) for name, pattern in COUNTED.items()})
    return result


def kernel_rows(case_key: str, dtype: torch.dtype, sms: int, capability: int, scratch: str,
                dump: Optional[str] = None, fused: bool = False) -> List[dict]:
    rows = []
    for fn, grid, args, kwargs in captured_launches(GPU_CASES[case_key], dtype, sms, fused):
        compiled = compile_launch(fn, args, kwargs, capability)
        row = dict(case=case_key + (' fused' if fused else ''), dtype=str(dtype).split('.')[1],
                   kernel=fn.__name__.strip('_'), grid=tuple(grid), warps=kwargs.get('num_warps', 4),
                   **resources(compiled, scratch))
        rows.append(row)
        if dump:
            for ext in ('ttgir', 'ptx'):
                with open(osp.join(dump, f"{case_key}_{row['dtype']}_{row['kernel']}.{ext}"), 'w') as f:
                    f.write(compiled.asm[ext])
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cases', default=','.join(GPU_CASES), help=f'comma-separated, of {", ".join(GPU_CASES)}')
    parser.add_argument('--dtypes', default='float32,bfloat16', help='comma-separated: float32, bfloat16, float16')
    parser.add_argument('--capability', type=int, default=90, help='compute capability, e.g. 90 (H100 / H200)')
    parser.add_argument('--sms', type=int, default=132, help="the GPU's SM count (sets the sequence splits)")
    parser.add_argument('--fused', action='store_true', help="VSS cases as the fused four-direction scan")
    parser.add_argument('--dump', help='also write each kernel\'s ttgir and ptx into this folder')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.cases.split(',')) - set(GPU_CASES))
    if unknown:
        parser.error(f'unknown cases {unknown}; valid: {", ".join(GPU_CASES)}')
    for name in args.dtypes.split(','):
        if getattr(torch, name, None) not in POINTER_TYPES:
            parser.error(f'unknown dtype {name!r}; valid: float32, bfloat16, float16')
    return args


def main(argv=None) -> None:
    import tempfile
    args = parse_args(argv)
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    columns = ['case', 'dtype', 'kernel', 'grid', 'warps', 'regs', 'stack', 'shared', *COUNTED]
    print(f'sm_{args.capability}, {args.sms} SMs; PTX instruction counts per kernel text\n')
    print('| ' + ' | '.join(columns) + ' |')
    print('|' + '---|' * len(columns))
    with tempfile.TemporaryDirectory() as scratch:
        for case_key in args.cases.split(','):
            for dtype_name in args.dtypes.split(','):
                for row in kernel_rows(case_key, getattr(torch, dtype_name), args.sms, args.capability, scratch,
                                       args.dump, args.fused):
                    print('| ' + ' | '.join(str(row[c]) for c in columns) + ' |', flush=True)


if __name__ == '__main__':
    main()
