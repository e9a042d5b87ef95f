"""tools/analysis/benchmark_scan_backward.py: its variant names and its refusal without a GPU (the timings need
CUDA: docs/benchmarks.md has the tables it printed)."""
import argparse

import pytest
import torch
from tool_loading import load_tool

bench = load_tool('analysis/benchmark_scan_backward.py')


def test_variants_are_parsed_with_their_options(tmp_path):
    assert bench.parse_variant('triton') == bench.Variant('triton', None, 0, 0)
    assert bench.parse_variant('warp') == bench.Variant('warp', 'package', 0, 0)
    assert bench.parse_variant('warp:k=2:regs=128') == bench.Variant('warp:k=2:regs=128', 'package', 2, 128)
    copy = tmp_path / 'copy.py'
    copy.write_text('')
    assert bench.parse_variant(f'{copy}:k=1').module == str(copy)
    for bad, message in (('warp:k=3', 'k must be'), ('warp:steps=2', 'use k='), ('triton:k=2', 'no options'),
                         ('gluon', 'unknown variant'), (str(tmp_path / 'missing.py'), 'no such kernel module')):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            bench.parse_variant(bad)
    args = bench.parse_args(['--variants', 'warp,warp:k=2', '--cases', 'vss-s1,cross-s3'])
    assert [v.name for v in args.variants] == ['warp', 'warp:k=2'] and args.cases == ['vss-s1', 'cross-s3']
    with pytest.raises(SystemExit):
        bench.parse_args(['--cases', 'vss-s9'])


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given without a GPU')
def test_needs_a_gpu(capsys):
    assert bench.main([]) == 2
    assert 'needs a CUDA GPU' in capsys.readouterr().err
