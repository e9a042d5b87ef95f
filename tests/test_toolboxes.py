"""MambaVision in mmdet, mmseg and mmpretrain: registry builds through custom_imports, configs, backbone swapping."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

mmengine = pytest.importorskip('mmengine', reason='the OpenMMLab stack is installed by tools/install.sh')
from mmengine.config import Config  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, 'configs')
TINY_ARCH = dict(depths=(1, 1, 2, 2), dim=16, in_dim=8, num_heads=(1, 2, 2, 4), window_size=(4, 4, 4, 2))
TINY_CHANNELS = [16, 32, 64, 128]


def _registry(scope):
    module = __import__(f'{scope}.registry', fromlist=['MODELS'])
    return module.MODELS


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_type_mambavision_builds_from_each_toolbox(scope, tmp_path):
    """A config with custom_imports=['mmmv'] builds type='MambaVision' from the toolbox's own registry."""
    pytest.importorskip(scope)
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text("custom_imports = dict(imports=['mmmv'], allow_failed_imports=False)\n"
                        f"backbone = dict(type='MambaVision', arch={TINY_ARCH!r}, out_indices=(1, 3))\n")
    cfg = Config.fromfile(str(cfg_file))
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(scope):
        backbone = _registry(scope).build(cfg.backbone)
    outs = backbone(torch.randn(1, 3, 50, 70))
    assert [o.shape[1] for o in outs] == [32, 128]


def test_unknown_keys_fail_through_the_registry():
    pytest.importorskip('mmdet')
    import mmmv  # noqa: F401
    from mmdet.registry import MODELS
    with pytest.raises(TypeError, match="did you mean 'drop_path_rate'"):
        MODELS.build(dict(type='MambaVision', arch=TINY_ARCH, drop_path=0.1))
    with pytest.raises(ValueError, match='valid names'):
        MODELS.build(dict(type='MambaVision', arch='Tiny-XL'))


def _tiny_detector_cfg(cfg):
    cfg.model.backbone.arch = TINY_ARCH
    cfg.model.backbone.window_size = None
    cfg.model.backbone.init_cfg = None
    cfg.model.neck.in_channels = TINY_CHANNELS
    return cfg


def _det_inputs(num_images=2, size=96):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    samples = []
    for i in range(num_images):
        sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                             scale_factor=(1.0, 1.0), batch_input_shape=(size, size)))
        masks = torch.zeros(1, size, size, dtype=torch.uint8)
        masks[0, 10:50, 20:70] = 1
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[20.0, 10.0, 70.0, 50.0]]),
                                           labels=torch.tensor([i % 3]),
                                           masks=BitmapMasks(masks.numpy(), size, size))
        samples.append(sample)
    return torch.randn(num_images, 3, size, size), samples


def test_headline_mask_rcnn_config_builds_and_computes_losses():
    pytest.importorskip('mmdet')
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(osp.join(CONFIGS, 'mask_rcnn_mambavision_t.py'))
    assert cfg.model.backbone.type == 'MambaVision' and cfg.model.backbone.arch == 'T'
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert cfg.train_cfg.max_epochs == 12 and cfg.model.type == 'MaskRCNN'
    init_default_scope('mmdet')
    model = MODELS.build(_tiny_detector_cfg(cfg).model)
    inputs, samples = _det_inputs()
    losses = model.loss(inputs, samples)
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(losses)
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if 'loss' in k)
    total.backward()
    assert model.backbone.patch_embed.conv1.weight.grad is not None


def test_swin_in_stock_mmdet_config_is_swapped_with_a_few_lines():
    """docs/swapping_backbones.md: Swin-T Mask R-CNN from mmdet's own config zoo, backbone replaced."""
    pytest.importorskip('mmdet')
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(osp.join(CONFIGS, 'examples', 'mask_rcnn_swin_to_mambavision.py'))
    assert 'pretrain_img_size' not in cfg.model.backbone  # _delete_ dropped Swin's keys
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    inputs, samples = _det_inputs(1, 64)
    model.eval()
    with torch.no_grad():
        feats = model.extract_feat(inputs)
    assert len(feats) == 5 and all(f.shape[1] == 256 for f in feats)


def test_swin_in_stock_mmseg_config_is_swapped_with_a_few_lines():
    pytest.importorskip('mmseg')
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = Config.fromfile(osp.join(CONFIGS, 'examples', 'upernet_swin_to_mambavision.py'))
    assert 'patch_size' not in cfg.model.backbone
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), mode='tensor')
    assert logits.shape == (1, 150, 16, 16)


def test_mmpretrain_registry_and_classifier_config():
    """Run in a subprocess: mmpretrain imports torchvision, which has no CPU wheel (tests/helpers/check_mmpretrain.py)."""
    pytest.importorskip('mmpretrain')
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tests', 'helpers', 'check_mmpretrain.py')],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith('OK 2 checks')
