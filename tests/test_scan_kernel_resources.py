"""tools/analysis/scan_kernel_resources.py: the scan kernels compiled for sm_90 on this machine (Triton's own
compiler and the ptxas of its wheel; no GPU). Also a guard on the bfloat16 kernels: they must not do more
per-element work than the float32 ones (Triton 3.6's layout pass made every state lane recompute the softplus unless
the narrow inputs are pinned; triton_kernels.py, `_pin`)."""
import os
import os.path as osp
import subprocess
import sys

import pytest

pytest.importorskip('triton')
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'analysis', 'scan_kernel_resources.py')


def run_tool(*args):
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}  # compile, do not interpret
    proc = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=900)
    return proc


@pytest.fixture(scope='module')
def table():
    proc = run_tool('--cases', 'mv-t-s4', '--dtypes', 'float32,bfloat16')
    if proc.returncode != 0 and 'ptxas' in proc.stderr and 'not found' in proc.stderr:
        pytest.skip('this triton has no bundled ptxas')  # e.g. a source build without the NVIDIA toolchain
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith('| mv-t-s4')]
    header = next(line for line in proc.stdout.splitlines() if line.startswith('| case'))
    names = [cell.strip() for cell in header.strip('|').split('|')]
    return [dict(zip(names, (cell.strip() for cell in line.strip('|').split('|')))) for line in lines]


def test_every_launched_kernel_is_reported(table):
    # batch 128 gives enough programs: no sequence splits, so no carry kernels
    assert sorted((row['dtype'], row['kernel']) for row in table) == [
        ('bfloat16', 'bwd_kernel'), ('bfloat16', 'fwd_kernel'), ('float32', 'bwd_kernel'), ('float32', 'fwd_kernel')]
    for row in table:
        assert 0 < int(row['regs']) <= 255 and int(row['ex2']) > 0 and int(row['st.global']) > 0, row


def test_bfloat16_kernels_do_no_more_work_than_float32(table):
    rows = {(row['dtype'], row['kernel']): row for row in table}
    for kernel in ('fwd_kernel', 'bwd_kernel'):
        narrow, wide = rows['bfloat16', kernel], rows['float32', kernel]
        for counted in ('ex2', 'fma'):
            assert int(narrow[counted]) <= int(wide[counted]), (kernel, counted, narrow, wide)


def test_main_kernels_scan_only_forward(tmp_path):
    """Triton lowers `associative_scan(reverse=True)` with a flip of the lanes (five butterfly shuffles per value of
    every input and output, even along an axis held by one thread): the backward scans flipped tiles forward instead
    (triton_kernels.py). Checked in the compiled kernels' TTGIR, which --dump writes. (The forward carry kernel's
    reverse cumulative sum is over a (tokens, channels) tile spread over the lanes, once per split.)"""
    proc = run_tool('--cases', 'mv-t-s3-det', '--dtypes', 'float32', '--dump', str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    scans = {}
    for path in sorted(tmp_path.glob('*.ttgir')):
        text = path.read_text()
        scans[path.name] = (text.count('"tt.scan"'), text.count('reverse = true'))
    assert 'mv-t-s3-det_float32_bwd_kernel.ttgir' in scans, sorted(scans)
    assert scans['mv-t-s3-det_float32_bwd_kernel.ttgir'][0] == 2  # the states' scan and the adjoint's
    for kernel in ('fwd_kernel', 'bwd_kernel'):
        assert scans[f'mv-t-s3-det_float32_{kernel}.ttgir'][1] == 0, scans


def test_bad_arguments_fail_with_the_valid_values():
    proc = run_tool('--cases', 'mv-t-s9')
    assert proc.returncode == 2 and "unknown cases ['mv-t-s9']" in proc.stderr and 'vss-s1' in proc.stderr
    proc = run_tool('--dtypes', 'float64')
    assert proc.returncode == 2 and "unknown dtype 'float64'" in proc.stderr


def test_fused_four_direction_scan():
    """--fused: VM-UNet's fused 2D scan (CROSS kernels) of a VSS case; a case that is not four square maps fails."""
    proc = run_tool('--cases', 'vss-s3', '--fused', '--dtypes', 'bfloat16')
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith('| vss-s3 fused | bfloat16 |')]
    assert {row.split('|')[3].strip() for row in rows} >= {'fwd_kernel', 'bwd_kernel'}
    proc = run_tool('--cases', 'mv-t-s3-det', '--fused')  # L = 4200: not a square map
    assert proc.returncode != 0 and '--fused needs a case of square maps' in proc.stderr


WARP_COMPILE = r'''
import re, subprocess, sys, os, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from mmmv.ops.selective_scan import gluon_kernels

fn = gluon_kernels._bwd_warp_kernel
narrow = sys.argv[2] == 'bfloat16'
constexprs = dict(HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, HAS_DLAST=True, BD=2, K=int(sys.argv[1]),
                  LOGK=int(sys.argv[1]).bit_length() - 1, NW=4, NP=16)
signature, consts, attrs = {}, {}, {}
for i, name in enumerate(fn.arg_names):
    if name in constexprs:
        signature[name] = 'constexpr'
        consts[(i,)] = constexprs[name]
    elif name.endswith('_ptr'):
        low = narrow and name in ('u_ptr', 'delta_ptr', 'dout_ptr', 'ddelta_ptr', 'B_ptr', 'C_ptr')
        signature[name] = '*bf16' if low else '*fp32'
        attrs[(i,)] = [['tt.divisibility', 16]]
    elif name in ('s_ul', 's_dl', 's_ol', 's_gl', 's_el', 's_an'):  # as the JIT specialises them at VSS sizes:
        signature[name] = 'constexpr'                                  # unit token strides,
        consts[(i,)] = 1
    else:                                                              # the other integers multiples of 16
        signature[name] = 'i32'
        attrs[(i,)] = [['tt.divisibility', 16]]
kernel = triton.compile(GluonASTSource(fn, signature, constexprs=consts, attrs=attrs),
                        target=GPUTarget('cuda', 90, 32), options=dict(num_warps=4, maxnreg=int(sys.argv[3]), enable_fp_fusion=True))
path = os.path.join(tempfile.mkdtemp(), 'k.cubin')
open(path, 'wb').write(kernel.asm['cubin'])
tool = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')
usage = dict(re.findall(r'(REG|STACK):(\d+)', subprocess.run([tool, '--dump-resource-usage', path],
                                                             capture_output=True, text=True).stdout))
ptx = kernel.asm['ptx']
print(usage['REG'], usage['STACK'], len(re.findall(r'\bshfl\.', ptx)), len(re.findall(r'\bbar\.sync', ptx)))
'''


@pytest.mark.parametrize('steps_per_lane, dtype', [(4, 'float32'), (4, 'bfloat16'), (2, 'float32'), (1, 'float32')])
def test_warp_backward_compiles_for_sm90(steps_per_lane, dtype):
    """The warp-layout backward (Gluon, mmmv/ops/selective_scan/gluon_kernels.py) compiled for sm_90 with this
    Triton and the register cap it is launched with: few spills, and the scans' shuffles stay per chunk (a reverse
    scan lowered with lane flips, or a layout conversion between the scans, would add hundreds; 94 at 4 steps per lane
    with Triton 3.6 and 3.9). Gluon has no interpreter, so this is what CI can check of it;
    tests/test_selective_scan_gpu.py runs it."""
    pytest.importorskip('triton.experimental.gluon')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    from mmmv.ops.selective_scan.triton_backend import WARP_MAX_REGISTERS

    proc = subprocess.run([sys.executable, '-c', WARP_COMPILE, str(steps_per_lane), dtype, str(WARP_MAX_REGISTERS)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if proc.returncode != 0 and 'ptxas' in proc.stderr and 'not found' in proc.stderr:
        pytest.skip('this triton has no bundled ptxas')
    assert proc.returncode == 0, proc.stderr[-3000:]
    regs, stack, shuffles, barriers = (int(v) for v in proc.stdout.split()[-4:])
    assert regs <= WARP_MAX_REGISTERS and stack <= 64, proc.stdout  # the cap as launched: a few spilled words
    assert shuffles <= 120 and barriers <= 12, proc.stdout
