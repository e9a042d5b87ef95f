"""Builds every given classification config through mmpretrain's registry and reports what was built, for
tests/test_zoo_cls_configs.py, which compares it with the official figures. Runs in its own process because mmpretrain
imports torchvision (tests/helpers/torchvision_shim.py stands in where no working torchvision exists).

    python check_zoo_cls_configs.py CONFIG.py [CONFIG.py ...] [--forward CONFIG.py ...] [--predict CONFIG.py ...]

prints one JSON object: for each config, the built classifier's parameter count and backbone layout (read from the
modules, not from mmmv's variant table) and the image shapes its test pipeline produces; for each --forward config, the
outputs of a small forward pass, and for each --predict config those of its whole test path from an image file. The
listed configs are built on the meta device (structure and parameter counts without allocating or initialising
weights: the L3 models have 740 M parameters); the --forward and --predict ones for real.
"""
import argparse
import json
import os.path as osp
import sys
import tempfile

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import torchvision_shim  # noqa: E402

# A synthetic landscape image: the test pipeline must resize its short side and centre-crop a square.
IMAGE_HW = (300, 400)
FORWARD_INPUT = (1, 3, 64, 64)


def build_classifier(cfg):
    from mmpretrain.registry import MODELS
    return MODELS.build(cfg.model)


def backbone_layout(classifier) -> dict:
    """The settings the built modules have (the ones ANCHORS section 1 tabulates). On the meta device parameters hold
    no values, so the initial layer-scale value is the one the backbone resolved (configs do not override it); whether
    the blocks have layer-scale parameters at all is read from the modules."""
    from mmmv.models.mambavision import Attention, MixerBlock
    backbone = classifier.backbone
    hybrid = [stage for stage in backbone.stages if not stage.conv]
    blocks = [block for stage in backbone.stages for block in stage.blocks]
    with_gamma = {block.gamma_1 is not None and block.gamma_2 is not None
                  for block in blocks if isinstance(block, MixerBlock)}
    return dict(
        depths=[len(stage.blocks) for stage in backbone.stages],
        dim=backbone.patch_embed.conv2.out_channels,
        in_dim=backbone.patch_embed.conv1.out_channels,
        hybrid_heads=[next(b.mixer.num_heads for b in stage.blocks if isinstance(b.mixer, Attention))
                      for stage in hybrid],
        windows=[stage.window_size for stage in backbone.stages],
        attention_blocks=[[i for i, b in enumerate(stage.blocks) if isinstance(b.mixer, Attention)]
                          for stage in hybrid],
        layer_scale_params=sorted(with_gamma),
        layer_scale=backbone.arch_settings['layer_scale'],
        conv_layer_scale_params=any(getattr(block, 'gamma', None) is not None for block in blocks),
        drop_path=[block.drop_path.drop_prob for block in blocks],
        final_norm=backbone.norm is not None,
        head_in_channels=classifier.head.fc.in_features,
        num_classes=classifier.head.fc.out_features,
        params=sum(p.numel() for p in classifier.parameters()),
    )


def test_pipeline_shapes(cfg, image_path) -> dict:
    """Image shape after each step of the config's test pipeline, applied to a 300 x 400 image."""
    from mmpretrain.registry import TRANSFORMS
    results = dict(img_path=image_path)
    shapes = {}
    for step in cfg.test_dataloader.dataset.pipeline:
        results = TRANSFORMS.build(step)(results)
        if 'img' in results:
            shapes[step['type']] = list(results['img'].shape[:2])
    shapes['packed'] = list(results['inputs'].shape)
    return shapes


def forward_outputs(cfg, image_path, predict: bool) -> dict:
    """A (1, 3, 64, 64) forward in mode='tensor'; with ``predict`` also the whole test path from an image file
    (pipeline, data preprocessor, mode='predict')."""
    import torch
    from mmengine.dataset import Compose, default_collate
    from mmpretrain.registry import TRANSFORMS
    torch.manual_seed(0)
    classifier = build_classifier(cfg).eval()
    with torch.no_grad():
        logits = classifier(torch.randn(*FORWARD_INPUT), mode='tensor')
        outputs = dict(tensor_shape=list(logits.shape), tensor_finite=bool(torch.isfinite(logits).all()))
        if predict:
            pipeline = Compose([TRANSFORMS.build(step) for step in cfg.test_dataloader.dataset.pipeline])
            batch = classifier.data_preprocessor(default_collate([pipeline(dict(img_path=image_path))]), False)
            [prediction] = classifier(**batch, mode='predict')
            outputs.update(predict_input_shape=list(batch['inputs'].shape),
                           score_shape=list(prediction.pred_score.shape), score_sum=float(prediction.pred_score.sum()))
    return outputs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('configs', nargs='+')
    parser.add_argument('--forward', nargs='*', default=[])
    parser.add_argument('--predict', nargs='*', default=[])
    args = parser.parse_args()
    shimmed = torchvision_shim.install_if_needed()
    import numpy as np
    import torch
    from mmcv import imwrite
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    report = dict(shimmed=shimmed, configs={}, forward={})
    with tempfile.TemporaryDirectory() as tmp:
        image_path = osp.join(tmp, 'image.png')
        imwrite(np.random.default_rng(0).integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8), image_path)
        for path in args.configs:
            cfg = Config.fromfile(path)
            with torch.device('meta'):
                classifier = build_classifier(cfg)
            report['configs'][path] = dict(backbone_layout(classifier),
                                           test_shapes=test_pipeline_shapes(cfg, image_path))
            del classifier
        for path in dict.fromkeys(args.forward + args.predict):
            report['forward'][path] = forward_outputs(Config.fromfile(path), image_path, path in args.predict)
    print(json.dumps(report))


if __name__ == '__main__':
    main()
