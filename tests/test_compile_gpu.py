"""torch.compile of a training step of every model family on the GPU (inductor, the Triton scan inside the graph):
MambaVision-T, VSSEncoder and the whole VM-UNet, with the fused and the unfused 2D scan, in float32 and under bfloat16
autocast. The compiled loss and gradients must equal eager's. Needs CUDA; skipped elsewhere."""
import importlib
import os.path as osp
import warnings

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='compiled training is checked on a CUDA GPU')
pytest.importorskip('triton')

from mmmv.models import MambaVision  # noqa: E402
from tool_loading import load_tool  # noqa: E402

cross_scan = importlib.import_module('mmmv.ops.cross_scan')  # the module (mmmv.ops.cross_scan is also a function)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


compile_gradients = load_tool('analysis/compile_gradients.py')
# name -> (builder, input size): the models of tools/analysis/compile_gradients.py, which lists per parameter what
# this test bounds
MODELS = {name: compile_gradients.models()[name] for name in ('MambaVision-T', 'VSSEncoder', 'VM-UNet')}


def loss_and_grads(model, images, dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=dtype, enabled=dtype is not None):
        outputs = model(images)
    # each output against a fixed random map; not the mean square, which the outputs' LayerNorms make constant
    maps = compile_gradients.probes(outputs)
    loss = compile_gradients.probe_loss(outputs, maps=maps)
    loss.backward()
    # the size of the loss's terms (the loss itself, a sum of signed terms, can be near 0): the loss's tolerance
    scale = sum((out.detach().double() * probe).abs().mean() for out, probe in zip(outputs, maps))
    return loss.detach(), scale, [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def relative_errors(grads, reference):
    return [((g.double() - r).norm() / r.norm().clamp_min(1e-30)).item() for g, r in zip(grads, reference)]


@pytest.mark.parametrize('dtype', [None, torch.bfloat16], ids=['fp32', 'bf16'])
@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'unfused'])
@pytest.mark.parametrize('name', sorted(MODELS))
def test_compiled_training_step_equals_eager(name, fused, dtype, monkeypatch):
    """The compiled step's loss and gradients are as close to the float64 step's as eager's are (inductor reorders
    sums and picks its own attention kernels, so compiled and eager float32 differ by rounding, not more)."""
    if name == 'MambaVision-T' and not fused:
        pytest.skip('MambaVision has no 2D scan')
    monkeypatch.setattr(cross_scan, 'FUSED_BY_DEFAULT', fused)
    if dtype is None:
        # float32 on both sides: with cuDNN's TF32 on (PyTorch's default), inductor's convolutions round VM-UNet's
        # activations to TF32 where eager's kernels do not (H200: 8e-4 vs 1.5e-5 gradient error; docs/compile.md)
        monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    check_compiled_step(name, dtype)


@pytest.mark.parametrize('name', ['MambaVision-T', 'VM-UNet'])
def test_cuda_graph_training_step_equals_eager(name):
    """``mode='reduce-overhead'`` (CUDA graphs; the compile switch passes it on as ``compile=dict(mode=...)``) under
    bf16 autocast: the recorded step runs and is as close to float64 as eager. VM-UNet's failed until the fused
    backward stopped caching token orders inside its opaque op ("8 tensor(s) in the cudagraph pool not tracked as
    outputs")."""
    check_compiled_step(name, torch.bfloat16, mode='reduce-overhead')


def check_compiled_step(name, dtype, **compile_kwargs):
    """A training step of `name` compiled with `compile_kwargs` against eager's and float64's (three calls: CUDA
    graphs warm up, record, then replay)."""
    torch.manual_seed(0)
    build, size = MODELS[name]
    model = build().cuda().eval()  # eval: no drop path, so every run sees the same network
    images = torch.randn(2, 3, size, size, device='cuda')
    loss64, scale, grads64 = loss_and_grads(model.double(), images.double(), None)  # float64: torch scan backend
    model.float()
    loss, _, grads = loss_and_grads(model, images, dtype)
    torch._dynamo.reset()
    compiled = torch.compile(model, **compile_kwargs)
    for _ in range(3):  # the later calls run the cached graphs
        torch.compiler.cudagraph_mark_step_begin()
        loss_c, _, grads_c = loss_and_grads(compiled, images, dtype)
    assert len(grads_c) == len(grads) == len(grads64)
    floor = 1e-5 if dtype is None else 1e-2
    assert abs(loss_c.double() - loss64) <= 2 * abs(loss.double() - loss64) + floor * scale
    eager_all, compiled_all = relative_errors(grads, grads64), relative_errors(grads_c, grads64)
    eager, compiled_errors = max(eager_all), max(compiled_all)
    names = [name for name, p in model.named_parameters() if p.grad is not None]
    worst = max(range(len(names)), key=lambda i: compiled_all[i] - 2 * eager_all[i])
    norms = [g.norm().item() for g in grads64]
    median_norm = sorted(norms)[len(norms) // 2]
    message = (f'worst relative gradient error vs float64: compiled {compiled_errors:.2e}, eager {eager:.2e}; furthest '
               f'over its bound: {names[worst]} (compiled {compiled_all[worst]:.2e}, eager {eager_all[worst]:.2e}, '
               f'float64 gradient norm {norms[worst]:.1e}, median over parameters {median_norm:.1e}; '
               'tools/analysis/compile_gradients.py lists every parameter)')
    if compiled_errors > 2 * eager + floor:
        warnings.warn(message)  # in the warnings summary even when the test is an expected failure
    assert compiled_errors <= 2 * eager + floor, message


def test_compiled_attention_does_not_use_cudnn_sdpa():
    """MambaVision's attention at stage 2's window shape, under bf16 autocast: eager keeps torch's choice (cuDNN's
    kernel on Hopper), the compiled forward and backward graphs use another SDPA kernel (cuDNN's made compiled
    MambaVision-T's bf16 gradients 2.5e-1 off float64; mmmv.models.mambavision.COMPILED_SDPA_BACKENDS)."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    from mmmv.models.mambavision import Attention
    targets = []

    def record(graph_module, _):
        targets.extend(str(node.target) for node in graph_module.graph.nodes if node.op == 'call_function')
        return make_boxed_func(graph_module.forward)

    def backend(graph_module, inputs):
        return aot_module_simplified(graph_module, inputs, fw_compiler=record, bw_compiler=record)

    torch._dynamo.reset()
    block = Attention(320, 8).cuda()
    x = torch.randn(2, 196, 320, device='cuda', requires_grad=True)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        eager = block(x)
        compiled = torch.compile(block, backend=backend, fullgraph=True)(x)
    compiled.float().sum().backward()
    sdpa = [target for target in targets if 'scaled_dot_product' in target]
    assert len(sdpa) == 2, targets  # one forward, one backward kernel
    assert not any('cudnn' in target for target in sdpa), sdpa
    torch.testing.assert_close(compiled, eager, atol=2e-2, rtol=2e-2)


# Detection-like sizes: mmdet pads each batch to a multiple of 32, so consecutive iterations see different H, W.
DETECTION_SIZES = [(800, 1216), (768, 1344), (832, 1088), (736, 1312)]
# the official detection recipe's windows (configs/mask_rcnn_mambavision_t.py): stage 3's map in one 112 x 112 window
DETECTION_WINDOWS = (8, 8, 112, 56)


@pytest.mark.parametrize('dynamic,most', [(True, 2), (None, 3)], ids=['dynamic', 'automatic'])
def test_switch_compiles_a_few_times_over_detection_sizes(dynamic, most):
    """MambaVision-T with compile=dict(dynamic=...) trained under float16 autocast with a GradScaler (what
    AmpOptimWrapper does) at four detection sizes: a few graphs, not one per size (dynamic=True: one; automatic: one
    static graph first), the Triton scan inside. The bounds keep one more graph each: until the thirteenth session
    a stage's map needing padding to its windows or not (1344 = 6 x 224 does not) was a guard, now gone in AOT
    autograd's graphs (tests/test_compile.py); the fourteenth session's GPU run passed within these bounds (the
    counts were not printed then; now they are, `-rA`). With the detection recipe's windows: with ImageNet's the test
    passed on torch 2.11 while Mask R-CNN training failed in inductor's mix-order reduction of a norm's backward (its
    workspace slice at symbolic sizes; rows >= 4096 and >= 5 * 2 ** 20 elements select it, which the padded 112 x 112
    windows reach). docs/compile.md."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model = MambaVision('T', out_indices=(0, 1, 2, 3), window_size=DETECTION_WINDOWS,
                        compile=dict(dynamic=dynamic)).cuda().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler('cuda')
    for size in DETECTION_SIZES:
        with torch.autocast('cuda', dtype=torch.float16):
            outputs = model(torch.randn(2, 3, *size, device='cuda'))
        loss = sum(out.float().square().mean() for out in outputs)
        assert torch.isfinite(loss)
        # the scaled gradients may overflow at GradScaler's first scale (2 ** 16): it then skips the step and
        # lowers the scale, as in training, so the gradients' finiteness is not asserted
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    print(f"graphs compiled over {len(DETECTION_SIZES)} sizes: {counters['stats']['unique_graphs']}")  # -rA shows it
    assert counters['stats']['unique_graphs'] <= most, dict(counters['stats'])


def test_train_script_with_amp_and_the_switch(tmp_path):
    """tools/train.py --amp on the Mask R-CNN demo with model.backbone.compile=dict(dynamic=True): one epoch (its
    batches padded to different sizes) trains and writes a checkpoint whose keys have no `_orig_mod.`."""
    import subprocess
    import sys
    subprocess.run([sys.executable, osp.join(REPO, 'tools', 'misc', 'make_demo_data.py'), '--root',
                    osp.join(REPO, 'data', 'demo_coco')], check=True, cwd=REPO)
    subprocess.run([sys.executable, osp.join(REPO, 'tools', 'train.py'), 'configs/demo/mask_rcnn_mambavision_t_demo.py',
                    '--amp', '--work-dir', str(tmp_path), '--cfg-options', 'model.backbone.compile.dynamic=True',
                    'train_cfg.max_epochs=1', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=1'],
                   check=True, cwd=REPO, timeout=1800)
    from mmmv.checkpoint.safe_load import safe_load
    checkpoint = safe_load(osp.join(tmp_path, 'epoch_1.pth'))  # as users load it: no code from the file runs
    assert not any('_orig_mod' in key for key in checkpoint['state_dict'])
