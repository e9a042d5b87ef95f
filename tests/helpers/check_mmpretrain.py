"""mmpretrain checks, run in their own process by tests/test_toolboxes.py.

mmpretrain imports torchvision at module level; where no working torchvision exists (CPU-only torch) the import is
served by tests/helpers/torchvision_shim.py, which the checked code paths (registry builds, forward passes) never use.

    python check_mmpretrain.py   ->  prints 'OK <n> checks' or fails with a traceback
"""
import os
import os.path as osp
import sys
import tempfile

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import torchvision_shim  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_ARCH = dict(depths=(1, 1, 2, 2), dim=16, in_dim=8, num_heads=(1, 2, 2, 4), window_size=(4, 4, 4, 2))


def check_registry_build_through_custom_imports():
    import torch
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'cfg.py')
        with open(path, 'w') as f:
            f.write("custom_imports = dict(imports=['mmmv'], allow_failed_imports=False)\n"
                    f"backbone = dict(type='MambaVision', arch={TINY_ARCH!r}, out_indices=(1, 3))\n")
        cfg = Config.fromfile(path)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        backbone = MODELS.build(cfg.backbone)
    assert [o.shape[1] for o in backbone(torch.randn(1, 3, 50, 70))] == [32, 128]


def check_classifier_config_equals_plain_pytorch_classifier():
    """configs/mambavision_t_in1k.py's ImageClassifier gives MambaVisionClassifier's logits with the same weights
    (which tests/test_official_parity.py ties to the official model's logits)."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    from mmmv.models import MambaVisionClassifier
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'mambavision_t_in1k.py'))
    assert cfg.model.backbone.arch == 'T' and cfg.model.head.in_channels == 640
    assert cfg.optim_wrapper.optimizer.type == 'Lamb' and cfg.train_cfg.max_epochs == 310
    cfg.model.backbone.arch = TINY_ARCH
    cfg.model.head.in_channels = 128
    cfg.model.pop('train_cfg')
    init_default_scope('mmpretrain')
    classifier = MODELS.build(cfg.model).eval()
    reference = MambaVisionClassifier(TINY_ARCH).eval()
    missing, unexpected = classifier.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x, mode='tensor'), reference(x))


def main():
    shimmed = torchvision_shim.install_if_needed()
    os.chdir(REPO)
    checks = [v for k, v in sorted(globals().items()) if k.startswith('check_')]
    for check in checks:
        check()
    print(f'OK {len(checks)} checks' + (' (torchvision shimmed)' if shimmed else ''))


if __name__ == '__main__':
    main()
