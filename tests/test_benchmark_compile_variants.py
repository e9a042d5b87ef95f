"""tools/analysis/benchmark_compile_variants.py on the CPU (``aot_eager``, a tiny MambaVision): the variants are graphs
of their own, the rounds interleave them, the shipped functions are back afterwards, bad arguments fail. Its timings
are GPU measurements (docs/benchmarks.md)."""
import pytest
import torch
from torch._dynamo.utils import counters

from mmmv.models import MambaVisionClassifier, mambavision
from tool_loading import load_tool

variants_tool = load_tool('analysis/benchmark_compile_variants.py')
TINY = dict(depths=(1, 1, 2, 1), dim=8, in_dim=8, num_heads=(1, 1, 2, 2), window_size=(2, 2, 2, 1))


def test_rounds_interleave_variants_that_are_graphs_of_their_own(monkeypatch):
    args = variants_tool.parse_args(['--variants', 'compiled,slice-crop,eager', '--rounds', '2', '--steps', '2',
                                     '--warmup', '1', '--backend', 'aot_eager', '--device', 'cpu',
                                     '--dtype', 'float32'])
    order = []
    original_use = variants_tool.use
    monkeypatch.setattr(variants_tool, 'use', lambda name: (order.append(name), original_use(name)))
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = MambaVisionClassifier(TINY, num_classes=10)
    images, target = torch.randn(2, 3, 64, 48), torch.randint(0, 10, (2,))  # 48: stage 2's map pads to its window
    rows = variants_tool.run(model, images, target, args.variants, args)
    assert [row['variant'] for row in rows] == ['compiled', 'slice-crop', 'eager']
    assert rows[0]['ratio'] == 1.0 and all(len(row['round_medians']) == 2 for row in rows)
    # compile pass, then two rounds of all three, then the shipped functions put back
    assert order == args.variants * 3 + ['compiled']
    assert mambavision.attention is variants_tool.SHIPPED[0] and mambavision.crop_to is variants_tool.SHIPPED[1]
    # the slice crop recompiled (dynamo guards on the swapped function), the rounds did not recompile anything
    frames = counters['stats']['unique_graphs']
    torch._dynamo.reset()
    counters.clear()
    variants_tool.run(model, images, target, ['compiled'], args)
    graphs_after_compiled = counters['stats']['unique_graphs']
    assert frames > graphs_after_compiled > 0


@pytest.mark.parametrize('argv,words', [
    (['--variants', 'compiled,fast'], "unknown variants ['fast']"),
    (['--arch', 'Q'], "unknown arch 'Q'"),
    (['--rounds', '0'], '--rounds must be at least 1'),
    (['--variants', 'compiled,reduce-overhead', '--backend', 'aot_eager'], "variants ['reduce-overhead'] set a"),
])
def test_bad_arguments_fail_with_the_choices(argv, words, capsys):
    with pytest.raises(SystemExit):
        variants_tool.parse_args(argv)
    assert words in capsys.readouterr().err
