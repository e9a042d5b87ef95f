"""The backbones' ``compile`` option on CPU (docs/compile.md): compiled in place (state-dict keys unchanged), forward
and backward equal to eager in float32 and under bfloat16 autocast, new input sizes that do not recompile, short
errors for bad values, and the Runner-less tools that switch it off.

CPU runs use torch.compile's ``aot_eager`` backend: it traces exactly what inductor traces (dynamo's graphs, the guards
that decide recompilation, the scan ops' fake implementations, AOT autograd's backward) but runs the traced aten ops
instead of generating C++, which takes minutes per model on 2 cores. Inductor runs in tests/test_compile_gpu.py."""
import contextlib

import pytest
import torch
from torch._dynamo.utils import counters

from mmmv.models import MambaVision, VSSEncoder
from mmmv.models import vss
from mmmv.models.backbone_base import (COALESCING_OPTION, COMPILE_KEYS, MIX_ORDER_OPTION, crop_to,
                                       inductor_workarounds)
from tool_loading import load_tool

AOT = dict(backend='aot_eager')
MV_ARCH = dict(depths=(1, 1, 2, 1), dim=8, in_dim=8, num_heads=(1, 1, 2, 2), window_size=(2, 2, 2, 1))
VSS_ARCH = dict(depths=(1, 1, 1, 1), embed_dim=8)
BUILDERS = {
    # out_indices (0, 1, 2): stride 16 at most, so that 32-pixel inputs still give maps of 2 or more
    'MambaVision': lambda **kw: MambaVision(MV_ARCH, out_indices=(0, 1, 2), **kw),
    'VSSEncoder': lambda **kw: VSSEncoder(VSS_ARCH, out_indices=(0, 1, 2), **kw),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def twins(name, **kwargs):
    """An eager backbone and a compiled one with the same weights (eval: no drop path)."""
    torch.manual_seed(0)
    eager = BUILDERS[name](**kwargs).eval()
    compiled = BUILDERS[name](compile=AOT, **kwargs).eval()
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def step(model, images, autocast, probe_loss):
    model.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        outputs = model(images)
    # each output against a fixed random map: the outputs' mean square, which their LayerNorms make constant, would
    # leave only rounding noise in the gradients behind the norms
    probe_loss(outputs).backward()
    return [o.detach().float() for o in outputs], [p.grad for p in model.parameters()]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_compiles_in_place(name):
    """The backbone is compiled, not wrapped: same class, same state-dict keys (no ``_orig_mod.``), so checkpoints,
    converters, EMA copies and ``init_cfg`` loading see the eager module."""
    eager, compiled = twins(name)
    assert type(compiled) is type(eager) and compiled._compiled_call_impl is not None
    assert eager._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any('_orig_mod' in key for key in compiled.state_dict())
    assert compiled.compile_options == AOT


@contextlib.contextmanager
def logged(name: str):
    """The messages print_log(..., logger='current') writes meanwhile: those of a new MMLogger instance `name` (the
    newest instance is the 'current' one)."""
    import logging
    from mmengine.logging import MMLogger
    logger = MMLogger.get_instance(name)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_the_switch_says_the_first_call_compiles(name):
    """Compiling takes minutes on the first iteration with nothing else logged: the run's logger says so once, at
    build time, naming the backbone and the option; no line when the option is off."""
    with logged(f'compile_switch_{name}') as messages:
        BUILDERS[name]()
        assert not messages
        BUILDERS[name](compile=dict(dynamic=True))
    assert len(messages) == 1 and messages[0].startswith(f"{name}: compile={{'dynamic': True}}"), messages
    assert 'first call' in messages[0] and 'docs/compile.md' in messages[0]


@pytest.mark.parametrize('version,options,named', [
    ('2.11.0+cu130', {}, [COALESCING_OPTION, MIX_ORDER_OPTION]),
    ('2.11.0+cu130', {MIX_ORDER_OPTION: False}, [COALESCING_OPTION]),
    ('2.13.0', {}, [COALESCING_OPTION]),
])
def test_the_switch_log_names_the_options_turned_off(version, options, named, monkeypatch):
    """The build-time line names the inductor options the workarounds turned off on this torch (not those the user
    set), so that a run's log says what the switch changed."""
    monkeypatch.setattr(torch, '__version__', torch.torch_version.TorchVersion(version))
    monkeypatch.setattr(torch.nn.Module, 'compile', lambda self, **kwargs: None)
    with logged(f'compile_switch_options_{version}_{len(options)}') as messages:
        BUILDERS['MambaVision'](compile=dict(dynamic=True, options=options))
    message = messages[0]
    assert f'off for symbolic sizes on this torch: {", ".join(named)})' in message, message


def test_registry_and_cfg_options_spelling():
    """`--cfg-options model.backbone.compile=True` reaches the backbone as the bool True; a ConfigDict works too."""
    from mmengine.config import ConfigDict
    from mmengine.registry import MODELS
    import mmmv  # noqa: F401  (registers the backbones)
    model = MODELS.build(dict(type='VSSEncoder', arch=VSS_ARCH, compile=True))
    assert model.compile_options == {} and model._compiled_call_impl is not None
    model = MODELS.build(dict(type='MambaVision', arch=MV_ARCH, compile=ConfigDict(dynamic=True, backend='eager')))
    assert model.compile_options == dict(dynamic=True, backend='eager')


@pytest.mark.parametrize('value,error,words', [
    ('yes', TypeError, ["got 'yes'", 'compile=True']),
    (1, TypeError, ['got 1', 'compile=True']),
    (dict(dynamc=True), ValueError, ["['dynamc']", 'dynamic']),
])
@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_bad_values_fail_with_the_fix(name, value, error, words):
    with pytest.raises(error) as info:
        BUILDERS[name](compile=value)
    message = str(info.value)
    assert message.startswith(f'{name}: ') and all(word in message for word in words), message


def test_compile_keys_are_torch_compile_arguments():
    import inspect
    assert set(COMPILE_KEYS) <= set(inspect.signature(torch.compile).parameters)


OFF = {COALESCING_OPTION: False}


@pytest.mark.parametrize('kwargs,expected', [
    (dict(dynamic=True), dict(dynamic=True, options=OFF)),
    (dict(dynamic=True, options={'max_autotune': True}), dict(dynamic=True, options={'max_autotune': True, **OFF})),
    (dict(dynamic=True, options={COALESCING_OPTION: True}), dict(dynamic=True, options={COALESCING_OPTION: True})),
    (dict(dynamic=False), dict(dynamic=False)),
    (dict(dynamic=True, backend='aot_eager'), dict(dynamic=True, backend='aot_eager')),
    (dict(dynamic=True, disable=True), dict(dynamic=True, disable=True)),
])
def test_inductor_workaround_for_symbolic_sizes(kwargs, expected, monkeypatch):
    """Inductor's coalescing analysis asserts on symbolic sizes in torch < 2.12 (pytorch#181563; MambaVision-T with
    dynamic=True on torch 2.11): the option turns it off for dynamic graphs, unless the user's options say otherwise
    or inductor is not the backend. (On a torch where mix-order reductions are fixed: 2.13.)"""
    monkeypatch.setattr(torch, '__version__', torch.torch_version.TorchVersion('2.13.0'))
    assert inductor_workarounds(kwargs) == expected


@pytest.mark.parametrize('version,dynamic,expected', [
    ('2.11.0+cu130', True, {COALESCING_OPTION: False, MIX_ORDER_OPTION: False}),
    ('2.11.0+cu130', None, {COALESCING_OPTION: False, MIX_ORDER_OPTION: False}),
    ('2.12.0', True, {COALESCING_OPTION: False, MIX_ORDER_OPTION: False}),
    ('2.12.0', None, {MIX_ORDER_OPTION: False}),
    ('2.13.0', True, {COALESCING_OPTION: False}),
    ('2.13.0', None, None),
    ('2.11.0+cu130', False, None),
])
def test_inductor_workarounds_follow_the_torch_version(version, dynamic, expected, monkeypatch):
    """Mix-order reductions slice their workspace with an unparenthesised symbolic stride on torch < 2.13 (Mask R-CNN
    with dynamic=True on torch 2.11: RuntimeError in the first backward): off for dynamic=True and automatic dynamic
    shapes there; the coalescing analysis off with dynamic=True everywhere and automatically on torch < 2.12."""
    monkeypatch.setattr(torch, '__version__', torch.torch_version.TorchVersion(version))
    kwargs = {} if dynamic is None else dict(dynamic=dynamic)
    assert inductor_workarounds(kwargs) == (kwargs if expected is None else dict(kwargs, options=expected))


def test_inductor_workaround_leaves_what_the_user_set(monkeypatch):
    monkeypatch.setattr(torch, '__version__', torch.torch_version.TorchVersion('2.11.0'))
    result = inductor_workarounds(dict(dynamic=True, options={MIX_ORDER_OPTION: True}))
    assert result == dict(dynamic=True, options={MIX_ORDER_OPTION: True, COALESCING_OPTION: False})


def test_inductor_workaround_keeps_the_mode_as_options(monkeypatch):
    """torch.compile takes a mode or options, not both: a mode becomes the options it stands for, plus the
    workaround, and torch.compile accepts the result."""
    import torch._inductor
    monkeypatch.setattr(torch, '__version__', torch.torch_version.TorchVersion('2.13.0'))
    result = inductor_workarounds(dict(dynamic=True, mode='max-autotune-no-cudagraphs'))
    assert 'mode' not in result
    assert result['options'] == {**torch._inductor.list_mode_options('max-autotune-no-cudagraphs', True), **OFF}
    torch.compile(torch.nn.Linear(2, 2), **result)  # no "either mode or options" error


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_backbone_compiles_with_the_workaround(name, monkeypatch):
    """What the backbone hands to nn.Module.compile: the workaround applied; compile_options keeps what the user
    wrote."""
    seen = {}
    monkeypatch.setattr(torch, '__version__', torch.torch_version.TorchVersion('2.13.0'))
    monkeypatch.setattr(torch.nn.Module, 'compile', lambda self, **kwargs: seen.update(kwargs))
    model = BUILDERS[name](compile=dict(dynamic=True))
    assert seen == dict(dynamic=True, options=OFF) and model.compile_options == dict(dynamic=True)


# float32: aot_eager runs the same aten ops as eager, but AOT autograd decomposes some backward formulas (LayerNorm,
# BatchNorm, GELU) and sums in another order: differences of float32 rounding, measured <= 5e-6 relative; under
# bfloat16 autocast each rounding to bfloat16 (relative 2**-8 = 3.9e-3) may land differently: measured <= 2e-3.
TOLERANCE = {False: 1e-4, True: 3e-2}


@pytest.mark.parametrize('autocast', [False, True], ids=['fp32', 'bf16-autocast'])
@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_compiled_equals_eager_on_the_torch_backend(name, autocast, probe_loss):
    """Forward and backward of the compiled backbone equal eager's. On the torch scan backend the scan runs eagerly
    between the compiled graphs (interface.untraced_torch_backend): without that, tracing it failed."""
    eager, compiled = twins(name, scan_backend='torch')
    images = torch.randn(2, 3, 64, 96)
    outputs, grads = step(eager, images, autocast, probe_loss)
    outputs_c, grads_c = step(compiled, images, autocast, probe_loss)
    assert counters['stats']['unique_graphs'] >= 1  # it did compile
    assert len(grads_c) == len(grads) and all(g is not None for g in grads_c)
    errors = [relative_error(a, b) for a, b in zip(outputs_c + grads_c, outputs + grads)]
    assert max(errors) <= TOLERANCE[autocast], max(errors)


@pytest.fixture
def triton_on_cpu():
    pytest.importorskip('triton')
    from mmmv.ops.selective_scan import triton_backend
    if not torch.cuda.is_available() and not triton_backend.interpreting():
        pytest.skip('no CUDA and TRITON_INTERPRET is not set (tests/conftest.py sets it)')
    return 'cuda' if torch.cuda.is_available() else 'cpu'


# Sizes as a detection batch changes them (multiples of 16 here, of 32 in mmdet), not square at first (dynamo would
# guard H == W), giving every map and window count 2 or more (dynamo specialises sizes 0 and 1), with maps that need
# no padding to the windows (the padding cases: test_padding_cases_share_one_graph_in_training) and in one band of
# torch's CPU convolution heuristics (its CPU conv meta functions guard on the element count, e.g. 3 * H * W <= 20480,
# and recompile once more past it; measured here, not on CUDA).
SIZES = {'MambaVision': [(64, 96), (96, 64), (64, 64)]}


# VSSEncoder on the fused Triton 2D scan takes over 8 minutes here in triton's interpreter: checked on the GPU only
@pytest.mark.parametrize('name', ['MambaVision'])
def test_new_input_sizes_do_not_recompile(name, triton_on_cpu):
    """With dynamic=True one graph serves every size; with torch's default (automatic dynamic) the first change of
    size recompiles once with symbolic sizes, and later sizes reuse it. The Triton scan is in the graph here (its
    fake implementation is traced with symbolic lengths); forward only, in eval mode, to stay fast in the
    interpreter."""
    for dynamic, compiles in ((True, 1), (None, 2)):
        torch._dynamo.reset()
        counters.clear()
        model = BUILDERS[name](scan_backend='triton', compile=dict(AOT, dynamic=dynamic)).eval().to(triton_on_cpu)
        with torch.no_grad():
            for size in SIZES[name]:
                model(torch.randn(1, 3, *size, device=triton_on_cpu))
        assert counters['stats']['unique_graphs'] == compiles, (dynamic, dict(counters['stats']))


# Sizes giving MambaVision's hybrid stage (window 2, a map of H / 16 x W / 16) each case of padding to its windows:
# none, H, W, both (one band of the CPU convolution heuristics, as SIZES)
PADDING_SIZES = [(64, 96), (48, 96), (64, 80), (48, 80)]


def test_padding_cases_share_one_graph_in_training(triton_on_cpu, probe_loss):
    """With dynamic=True a training step (forward and AOT autograd's backward, the Triton scan in the graph) compiles
    once for maps that need padding to the windows and maps that do not, and equals eager at a padded size. While
    compiling, the crop back from the windows is a gather: a slice's gradient asked whether the map had been padded,
    a guard per case (four graphs here before; docs/compile.md)."""
    torch.manual_seed(0)
    eager = BUILDERS['MambaVision'](scan_backend='triton').eval().to(triton_on_cpu)
    model = BUILDERS['MambaVision'](scan_backend='triton', compile=dict(AOT, dynamic=True)).eval().to(triton_on_cpu)
    model.load_state_dict(eager.state_dict())
    for size in PADDING_SIZES:
        images = torch.randn(1, 3, *size, device=triton_on_cpu)
        outputs, grads = step(model, images, False, probe_loss)
    assert counters['stats']['unique_graphs'] == 1, dict(counters['stats'])
    outputs_e, grads_e = step(eager, images, False, probe_loss)
    errors = [relative_error(a, b) for a, b in zip(outputs + grads, outputs_e + grads_e)]
    assert max(errors) <= TOLERANCE[False], max(errors)


def vss_scan_stand_in(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, **kwargs):
    """A traceable stand-in of the fused 2D scan's shapes (the Triton one takes minutes in the interpreter; the torch
    backend runs eagerly between graphs, whose count then says nothing)."""
    return u * torch.sigmoid(delta.sum(1)) + (B.sum((1, 2)) * C.sum((1, 2))).unsqueeze(1)


def test_vss_padding_cases_share_one_graph_in_training(monkeypatch, probe_loss):
    """VSSEncoder with dynamic=True: maps that its patch merging pads to even sizes (H, W, both, neither) share one
    training graph. While compiling with symbolic sizes, pad_to_multiple always pads: its early return when nothing
    needed padding was a guard per case. The model's code around the scan is what is checked: the 2D scan is replaced
    by `vss_scan_stand_in`."""
    monkeypatch.setattr(vss, 'cross_selective_scan', vss_scan_stand_in)
    # all four stages: the stride-16 map (4 x 6, 3 x 6, 4 x 5, 3 x 5) is padded to even sizes for the last one
    model = VSSEncoder(VSS_ARCH, out_indices=(0, 1, 2, 3), compile=dict(AOT, dynamic=True)).eval()
    for size in PADDING_SIZES:
        step(model, torch.randn(1, 3, *size), False, probe_loss)
    assert counters['stats']['unique_graphs'] == 1, dict(counters['stats'])


def tiny_vmunet() -> torch.nn.Module:
    """VSSEncoder + VM-UNet's decoder stages (VMUNetHead's, without mmseg) + the classifier, as
    tools/analysis/benchmark_vmunet.py builds the whole model, at VSS_ARCH's widths."""
    return load_tool('analysis/benchmark_vmunet.py').VMUNet(arch=VSS_ARCH, decoder_depths=(1, 1, 1, 1),
                                                             drop_path_rate=0.0)


def test_whole_vmunet_padding_cases_share_one_graph_in_training(monkeypatch, probe_loss):
    """The whole VM-UNet under torch.compile(dynamic=True) (the decoder too, which the switch leaves eager): the
    decoder crops each upsampled map back to its skip's size where the encoder padded an odd map, by a gather while
    the sizes are symbolic (`crop_to`): one training graph for sizes with and without odd maps (three for these five
    with the slice). The 2D scan is a traceable stand-in, as in the test above."""
    monkeypatch.setattr(vss, 'cross_selective_scan', vss_scan_stand_in)
    torch.manual_seed(0)
    eager = tiny_vmunet().eval()
    compiled = torch.compile(eager, backend='aot_eager', dynamic=True)
    for size in PADDING_SIZES + [(56, 88)]:  # 56 x 88: odd stride-8 map (7 x 11) as well
        images = torch.randn(1, 3, *size)
        outputs, grads = step(compiled, images, False, probe_loss)
    assert counters['stats']['unique_graphs'] == 1, dict(counters['stats'])
    outputs_e, grads_e = step(eager, images, False, probe_loss)
    assert outputs[0].shape[-2:] == size
    # the stand-in scan leaves the scans' own parameters (A, D, ...) without gradients, in both runs alike
    assert [g is None for g in grads] == [g is None for g in grads_e]
    pairs = [(a, b) for a, b in zip(outputs + grads, outputs_e + grads_e) if b is not None]
    assert max(relative_error(a, b) for a, b in pairs) <= 1e-5


def traced_ops(fn, *args, dynamic):
    """The ops of the graph dynamo traces for fn(*args) (not run through AOT autograd)."""
    ops = []

    def backend(gm, example_inputs):
        ops.extend(str(node.target) for node in gm.graph.nodes if node.op == 'call_function' or
                   node.op == 'call_method')
        return gm.forward

    result = torch.compile(fn, backend=backend, dynamic=dynamic)(*args)
    return ops, result


@pytest.mark.parametrize('dynamic,target,expected', [
    (False, (5, 8), 'narrow'),   # static sizes: the slice, which asks nothing of symbolic sizes
    (False, (6, 8), None),       # static, nothing to crop: no op at all
    (True, (5, 7), 'index_select'),  # symbolic sizes not known equal: the gather
])
def test_crop_to_slices_static_sizes_and_gathers_symbolic_ones(dynamic, target, expected):
    x = torch.randn(1, 2, 6, 8)

    def crop(x, like):
        return crop_to(x, like.shape[2], like.shape[3])

    ops, result = traced_ops(crop, x, torch.empty(1, 1, *target), dynamic=dynamic)
    assert torch.equal(result, x[:, :, :target[0], :target[1]])
    crops = [op for op in ops if 'narrow' in op or 'index_select' in op]
    assert (crops and all(expected in op for op in crops)) if expected else not crops, ops


@pytest.mark.parametrize('dynamic,size,expected', [
    (False, (6, 8), False),  # static sizes that need no padding: no op
    (False, (5, 8), True),   # static sizes that do
    (True, (6, 8), True),    # symbolic sizes: always padded (a branch on the amounts would be a guard)
])
def test_pad_to_multiple_pads_only_where_sizes_may_need_it(dynamic, size, expected):
    x = torch.randn(1, 2, *size)
    ops, result = traced_ops(lambda x: vss.pad_to_multiple(x, 2, channels_last=False), x, dynamic=dynamic)
    assert torch.equal(result, torch.nn.functional.pad(x, (0, size[1] % 2, 0, size[0] % 2)))
    assert any('pad' in op for op in ops) == expected, ops


@pytest.mark.parametrize('config', ['configs/demo/vmunet_demo.py', 'configs/demo/mask_rcnn_mambavision_t_demo.py'])
def test_runnerless_tools_switch_compile_off(config, capsys):
    """get_flops, pytorch2onnx and infer read configs through load_tool_config: the backbone runs eagerly there
    (FLOPs counting and ONNX export trace the model themselves; a few pictures would wait for the compile)."""
    import os.path as osp
    from mmmv.engine.cli import load_tool_config
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = load_tool_config(osp.join(root, config), {'model.backbone.compile': True})
    assert cfg.model.backbone.compile is False
    assert 'compile option is off' in capsys.readouterr().out
    cfg = load_tool_config(osp.join(root, config))
    assert not cfg.model.backbone.get('compile') and 'compile option' not in capsys.readouterr().out
