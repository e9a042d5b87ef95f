"""VM-UNet's decoder stages, in plain torch (no mmseg): :class:`~mmmv.models.vmunet_head.VMUNetHead` holds them as
mmseg decode head, and benchmarks build the whole VM-UNet from them and a :class:`~mmmv.models.vss.VSSEncoder`.

Stage 0 runs VSS blocks on the bottleneck (H/32, no upsampling); stages 1-3 add the input of encoder stage 3, 2, 1
(a plain sum, before upsampling), then a :class:`~mmmv.models.vss.PatchExpand` halves the channels and doubles the
resolution, then VSS blocks; a final 4x expansion gives features at the input resolution.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .backbone_base import crop_to
from .vss import PATCH_SIZE, SS2D_D_STATE, PatchExpand, make_blocks, run_blocks

DECODER_DEPTHS = (2, 2, 2, 1)
ENCODER_CHANNELS = (96, 192, 384, 768, 768)  # stage inputs at H/4 ... H/32, then the bottleneck
UPSAMPLE = 2


class VSSUpStage(nn.Module):
    """An optional :class:`PatchExpand` (2x, channels halved) cropped to a target size, then VSS blocks (the
    official ``VSSLayer_up``); (B, H, W, C) channels-last."""

    def __init__(self,
                 dim: int,
                 drop_path: Sequence[float],
                 upsample: bool,
                 attn_drop_rate: float = 0.0,
                 d_state: int = SS2D_D_STATE,
                 with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.upsample = PatchExpand(UPSAMPLE * dim, scale=UPSAMPLE) if upsample else None
        self.blocks = make_blocks(dim, drop_path, attn_drop_rate, d_state)

    def forward(self, x: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
            if size is not None:  # (B, H, W, C): back to the skip's size where the encoder padded an odd map
                x = crop_to(x, size[0], size[1], dims=(1, 2))
        return run_blocks(self.blocks, x, self.with_cp)


def decoder_dims(in_channels: Sequence[int], decoder_depths: Sequence[int]) -> List[int]:
    """The decoder stages' widths (bottleneck width halved per stage), after checking that ``in_channels`` are the
    encoder's stage inputs plus its bottleneck for that many stages."""
    in_channels = list(in_channels)
    num_stages = len(decoder_depths)
    if num_stages < 1 or not all(isinstance(d, int) and d >= 0 for d in decoder_depths):
        raise ValueError(f'VMUNetHead: decoder_depths must be non-negative ints, got {decoder_depths}')
    if len(in_channels) != num_stages + 1:
        raise ValueError(f'VMUNetHead: {num_stages} decoder stages take {num_stages + 1} maps (the inputs of '
                         f'{num_stages} encoder stages and the bottleneck), got in_channels={in_channels}')
    bottleneck = in_channels[-1]
    dims = [bottleneck // UPSAMPLE ** j for j in range(num_stages)]
    expected = dims[::-1] + [bottleneck]
    if in_channels != expected or dims[-1] % PATCH_SIZE or bottleneck % UPSAMPLE ** (num_stages - 1):
        raise ValueError(f'VMUNetHead: in_channels must be the encoder stage inputs and bottleneck, widths doubling '
                         f'per stage (e.g. {list(ENCODER_CHANNELS)}): expected {expected}, got {in_channels}')
    return dims


def decoder_stages(dims: Sequence[int], depths: Sequence[int], drop_path_rate: float, attn_drop_rate: float,
                   with_cp: bool) -> nn.ModuleList:
    """VM-UNet's ``layers_up``: stage j has ``dims[j]`` channels and ``depths[j]`` blocks, stochastic depth
    ``linspace(0, rate, sum(depths))`` reversed (deepest blocks first, as officially)."""
    dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()[::-1]
    stages = nn.ModuleList()
    for j, (dim, depth) in enumerate(zip(dims, depths)):
        start = sum(depths[:j])
        stages.append(VSSUpStage(dim, dpr[start:start + depth], upsample=j > 0, attn_drop_rate=attn_drop_rate,
                                 with_cp=with_cp))
    return stages


def decode(layers_up: nn.ModuleList, final_up: nn.Module, maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The decoder on the encoder's NCHW maps (stage inputs at strides 4 .. 32, then the bottleneck) -> NCHW
    features at 4x the stride-4 map, before the classifier."""
    skips = [m.permute(0, 2, 3, 1) for m in maps[:-1]]  # channels-last
    x = maps[-1].permute(0, 2, 3, 1)
    num_stages = len(layers_up)
    for j, stage in enumerate(layers_up):
        if j == 0:
            x = stage(x)
        else:
            x = stage(x + skips[num_stages - j], size=skips[num_stages - j - 1].shape[1:3])
    return final_up(x).permute(0, 3, 1, 2).contiguous()
