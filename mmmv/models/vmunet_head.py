"""VM-UNet's decoder (Ruan & Xiang 2024) as an mmseg decode head.

VM-UNet is then a plain mmseg ``EncoderDecoder``::

    model = dict(
        type='EncoderDecoder',
        backbone=dict(type='VSSEncoder', arch='vmunet', out_type='unet', out_norm=None, out_indices=(0, 1, 2, 3)),
        decode_head=dict(type='VMUNetHead', num_classes=2, out_channels=1,
                         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True)))

The decoder (:mod:`mmmv.models.vmunet_decoder`, which needs no mmseg) mirrors the encoder: stage 0 runs VSS blocks on the bottleneck (H/32, no upsampling); stages 1-3 add the
input of encoder stage 3, 2, 1 (a plain sum, before upsampling), then a :class:`~mmmv.models.vss.PatchExpand` halves
the channels and doubles the resolution, then VSS blocks. A final 4x expansion and a 1x1 convolution (mmseg's
``conv_seg``, VM-UNet's ``final_conv``) give logits at the input resolution. Parameter names follow VM-UNet
(``layers_up.{j}.upsample``, ``layers_up.{j}.blocks``, ``final_up``), so converted official checkpoints load.

This module imports mmseg; ``import mmmv`` does not import it (the registry builds the head through
:func:`build_vmunet_head`, which imports this module on first use).
"""
from typing import List, Optional, Sequence, Union

import torch

try:
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead
except ImportError as error:  # re-raised with the fix; mmseg is an optional dependency of mmmv
    raise ImportError("VMUNetHead is an mmseg decode head and needs mmsegmentation: pip install 'mmmv[seg]' "
                      f'(or tools/install.sh); importing mmseg failed with: {error}') from error

from ..ops.selective_scan import scan_backend as use_scan_backend
from ..ops.selective_scan.interface import check_backend_name
from .backbone_base import no_weight_decay_names
from .vmunet_decoder import DECODER_DEPTHS, ENCODER_CHANNELS, decode, decoder_dims, decoder_stages
from .vss import PATCH_SIZE, FinalPatchExpand4x, init_vss_weights, reset_vss_weights

class VMUNetHead(BaseDecodeHead):
    """VM-UNet's decoder on the maps of ``VSSEncoder(out_type='unet', out_indices=(0, 1, 2, 3), out_norm=None)``.

    Args:
        in_channels: channels of the maps it receives: the inputs of the encoder stages (strides 4, 8, 16, 32) and
            the bottleneck, e.g. (96, 192, 384, 768, 768). The stride-4 map is not added (VM-UNet has no skip there);
            it sets the size the decoder crops to when the input was not a multiple of 32.
        decoder_depths: VSS blocks per decoder stage, from the bottleneck up (VM-UNet: 2, 2, 2, 1).
        drop_path_rate: stochastic depth of the decoder, ``linspace(0, rate, sum(decoder_depths))`` reversed (VM-UNet
            uses its encoder rate).
        attn_drop_rate: dropout on each SS2D output.
        num_classes, out_channels, threshold, loss_decode, ignore_index, sampler, align_corners: as mmseg's
            ``BaseDecodeHead``; for binary masks (VM-UNet's one output channel) use ``num_classes=2, out_channels=1``
            and a sigmoid loss.
        dropout_ratio: dropout before ``conv_seg`` (VM-UNet has none).
        channels: the width before ``conv_seg``: fixed to a quarter of the last decoder stage's (24 for VM-UNet);
            None, or that value.
        in_index: which backbone outputs to take.
        with_cp: gradient checkpointing per block.
        scan_backend: selective-scan backend ('torch', 'triton', 'auto' or None), as for ``VSSEncoder``.
        init_cfg: mmengine init config applied after the official random initialisation.
    """

    def __init__(self,
                 *,
                 num_classes: int,
                 in_channels: Sequence[int] = ENCODER_CHANNELS,
                 decoder_depths: Sequence[int] = DECODER_DEPTHS,
                 drop_path_rate: float = 0.2,
                 attn_drop_rate: float = 0.0,
                 channels: Optional[int] = None,
                 out_channels: Optional[int] = None,
                 threshold: Optional[float] = None,
                 dropout_ratio: float = 0.0,
                 in_index: Sequence[int] = (0, 1, 2, 3, 4),
                 loss_decode: Union[dict, Sequence[dict]] = dict(type='CrossEntropyLoss', use_sigmoid=False,
                                                                 loss_weight=1.0),
                 ignore_index: int = 255,
                 sampler: Optional[dict] = None,
                 align_corners: bool = False,
                 with_cp: bool = False,
                 scan_backend: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        dims = decoder_dims(in_channels, decoder_depths)
        final_channels = dims[-1] // PATCH_SIZE  # FinalPatchExpand4x: 4x4 pixels from 4x the channels
        if channels is not None and channels != final_channels:
            raise ValueError(f'VMUNetHead: channels is fixed by the decoder to {final_channels} (a quarter of its last '
                             f'stage, {dims[-1]}), got {channels}; leave it out')
        super().__init__(list(in_channels), final_channels, num_classes=num_classes, out_channels=out_channels,
                         threshold=threshold, dropout_ratio=dropout_ratio, in_index=list(in_index),
                         input_transform='multiple_select', loss_decode=loss_decode, ignore_index=ignore_index,
                         sampler=sampler, align_corners=align_corners, init_cfg=init_cfg)
        self.decoder_dims = dims
        self.scan_backend = None if scan_backend is None else check_backend_name(scan_backend, 'VMUNetHead')
        self.layers_up = decoder_stages(dims, decoder_depths, drop_path_rate, attn_drop_rate, with_cp)
        self.final_up = FinalPatchExpand4x(dims[-1])
        self.apply(init_vss_weights)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """inputs: the backbone's NCHW maps -> logits (B, out_channels, 4 * h0, 4 * w0), h0 x w0 the stride-4 map."""
        with use_scan_backend(self.scan_backend):
            x = decode(self.layers_up, self.final_up, self._transform_inputs(inputs))
        return self.cls_seg(x)

    # The logits cover the input zero-padded to a multiple of 4 (the patch size); cropping them to the target, not
    # resizing, keeps pixels aligned. mmseg then resizes to the same size, which changes nothing.
    def loss_by_feat(self, seg_logits: torch.Tensor, batch_data_samples) -> dict:
        size = batch_data_samples[0].gt_sem_seg.data.shape[-2:]
        return super().loss_by_feat(crop_padding(seg_logits, size), batch_data_samples)

    def predict_by_feat(self, seg_logits: torch.Tensor, batch_img_metas: List[dict]) -> torch.Tensor:
        meta = batch_img_metas[0]
        if isinstance(meta['img_shape'], torch.Size) or 'pad_shape' not in meta:  # as mmseg picks its size
            size = meta['img_shape']
        else:
            size = meta['pad_shape'][:2]
        return super().predict_by_feat(crop_padding(seg_logits, size), batch_img_metas)

    def init_weights(self) -> None:
        """Official random init, then ``init_cfg`` (mmengine's) if one is given."""
        if not self._is_init:
            reset_vss_weights(self)
        super().init_weights()

    def no_weight_decay(self) -> set:
        """Names of the parameters that must not decay (A_logs, Ds)."""
        return no_weight_decay_names(self)


def crop_padding(seg_logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop logits of an input padded to a multiple of the patch size back to ``size`` (top-left); logits of any
    other size are returned unchanged (mmseg resizes them)."""
    height, width = int(size[0]), int(size[1])
    extra_h, extra_w = seg_logits.shape[-2] - height, seg_logits.shape[-1] - width
    if 0 <= extra_h < PATCH_SIZE and 0 <= extra_w < PATCH_SIZE:
        return seg_logits[..., :height, :width]
    return seg_logits
