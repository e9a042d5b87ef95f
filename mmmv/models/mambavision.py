"""MambaVision: A Hybrid Mamba-Transformer Vision Backbone (Hatamizadeh & Kautz, CVPR 2025).

An independent implementation written for mmmv. It matches the official model's architecture, parameter shapes and
numerics (so converted official checkpoints load and give the official outputs) but not its code:

- a conv stem and two convolutional stages (strides 4 and 8), then two hybrid stages (strides 16 and 32) whose blocks
  run on non-overlapping windows: the first half of each hybrid stage are Mamba mixers, the last half self-attention;
- the Mamba mixer calls :func:`mmmv.ops.selective_scan`, so it runs on any device without a compiled extension;
- the backbone returns NCHW maps for any subset of stages, each with its own output norm, and accepts any input size
  (the map is zero-padded to a multiple of the window and cropped back, exactly as the official model does).

This file depends on torch only. The OpenMMLab registration lives in :mod:`mmmv.registry`.
"""
import difflib
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..ops import selective_scan
from ..ops.selective_scan import scan_backend as use_scan_backend
from ..ops.selective_scan.interface import check_backend_name
from .backbone_base import StagedBackbone, crop_to, normalise_indices

# Normalisation constants of the official model.
STEM_BN_EPS = 1e-4
CONV_BLOCK_BN_EPS = 1e-5
# The official dense backbone's output norms are nn.LayerNorm subclasses with the default eps (timm's LayerNorm2d,
# eps 1e-6, appears in the classifier only as an init rule); a different eps changes outputs where a position's
# channel variance is small.
LAYER_NORM_2D_EPS = 1e-5
# Mamba mixer hyper-parameters shared by every released variant.
MIXER_D_STATE = 8
MIXER_D_CONV = 3
MIXER_DT_MIN, MIXER_DT_MAX, MIXER_DT_INIT_FLOOR = 1e-3, 0.1, 1e-4
MLP_RATIO = 4.0
INIT_STD = 0.02
NUM_STAGES = 4
CONV_STAGES = 2  # stages 0 and 1 are convolutional, the others hybrid Mamba/attention


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------
class DropPath(nn.Module):
    """Stochastic depth per sample (drops the whole residual branch)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def __init__(self, num_channels: int, eps: float = LAYER_NORM_2D_EPS):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


OUT_NORMS = {
    'ln2d': LayerNorm2d,
    'bn': nn.BatchNorm2d,
}


class Stem(nn.Module):
    """Two stride-2 3x3 convolutions with BN and ReLU: (B, in_channels, H, W) -> (B, dim, H/4, W/4)."""

    def __init__(self, in_channels: int, in_dim: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_dim, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_dim, eps=STEM_BN_EPS)
        self.conv2 = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim, eps=STEM_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class Downsample(nn.Module):
    """A stride-2 3x3 convolution doubling the channels; no norm."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvBlock(nn.Module):
    """Residual conv3x3-BN-GELU(tanh)-conv3x3-BN block of the two convolutional stages (NCHW)."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: Optional[float] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(dim, eps=CONV_BLOCK_BN_EPS)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(dim, eps=CONV_BLOCK_BN_EPS)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale))) if layer_scale is not None else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm1(self.conv1(x)), approximate='tanh')
        y = self.norm2(self.conv2(y))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return x + self.drop_path(y)


def inverse_softplus_dt(num: int, dt_min: float, dt_max: float, floor: float) -> torch.Tensor:
    """Bias that makes softplus(bias) log-uniform in [dt_min, dt_max] (Mamba's dt initialisation)."""
    dt = torch.exp(torch.rand(num) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


class MambaVisionMixer(nn.Module):
    """The MambaVision token mixer on (B, L, C) sequences.

    Half of the channels (x) go through a causal-free depthwise conv, SiLU and a selective scan; the other half (z)
    through a depthwise conv and SiLU only; the two halves are concatenated, not gated.
    """

    def __init__(self, dim: int, d_state: int = MIXER_D_STATE, d_conv: int = MIXER_D_CONV):
        super().__init__()
        if dim % 2:
            raise ValueError(f'MambaVisionMixer: dim must be even, got {dim}')
        inner = dim // 2
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, dim, bias=False)
        self.conv1d_x = nn.Conv1d(inner, inner, d_conv, padding='same', groups=inner, bias=False)
        self.conv1d_z = nn.Conv1d(inner, inner, d_conv, padding='same', groups=inner, bias=False)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.reset_dt_parameters()

    def reset_dt_parameters(self) -> None:
        """Mamba's dt initialisation; the generic Linear init must not overwrite it (``_no_reinit``)."""
        std = self.dt_rank ** -0.5
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(
                inverse_softplus_dt(self.dt_proj.out_features, MIXER_DT_MIN, MIXER_DT_MAX, MIXER_DT_INIT_FLOOR))
        self.dt_proj.weight._no_reinit = True
        self.dt_proj.bias._no_reinit = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, C) -> (B, L, C)."""
        batch, length, _ = x.shape
        xz = self.in_proj(x).transpose(1, 2)  # (B, C, L)
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d_x(x))
        z = F.silu(self.conv1d_z(z))
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, C/2, L), a strided view
        y = selective_scan(
            x, dt, -torch.exp(self.A_log.float()),
            B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
            D=self.D.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(torch.cat([y, z], dim=1).transpose(1, 2))


# SDPA backends allowed while torch.compile traces the attention: all but cuDNN's. Measured on an H200 (torch
# 2.11+cu130): torch picks cuDNN attention at MambaVision's window shapes, and the compiled bf16 training step of
# MambaVision-T then has gradients 2.5e-1 off float64 (eager 7.3e-2; with SDPA's math backend compiled 7.6e-2); eager
# cuDNN attention is right and keeps torch's choice. docs/compile.md.
COMPILED_SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention``; under torch.compile without cuDNN's backend (``COMPILED_SDPA_BACKENDS``)."""
    if torch.compiler.is_compiling():
        with sdpa_kernel(list(COMPILED_SDPA_BACKENDS)):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


class Attention(nn.Module):
    """Multi-head self-attention over (B, L, C) windows, qkv with bias, no positional terms."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'Attention: dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = attention(q, k, v, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, length, dim)))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class MixerBlock(nn.Module):
    """Pre-norm block of the hybrid stages: ``x + g1 * mixer(LN(x))`` then ``x + g2 * MLP(LN(x))`` on (B, L, C)."""

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 use_attention: bool,
                 mlp_ratio: float = MLP_RATIO,
                 drop: float = 0.0,
                 attn_drop: float = 0.0,
                 drop_path: float = 0.0,
                 layer_scale: Optional[float] = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = (Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=drop)
                      if use_attention else MambaVisionMixer(dim))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma_1 = self.gamma_2 = None

    @staticmethod
    def _scale(x: torch.Tensor, gamma: Optional[torch.Tensor]) -> torch.Tensor:
        return x if gamma is None else x * gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._scale(self.mixer(self.norm1(x)), self.gamma_1))
        return x + self.drop_path(self._scale(self.mlp(self.norm2(x)), self.gamma_2))


def attention_block_indices(depth: int) -> range:
    """The hybrid stages put self-attention in the last half of their blocks (the middle block is Mamba if odd)."""
    return range(depth // 2 + 1, depth) if depth % 2 else range(depth // 2, depth)


def round_up(size: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least `size` (also for symbolic sizes)."""
    return (size + multiple - 1) // multiple * multiple


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, H, W) with H, W multiples of ``window`` -> (B * num_windows, window * window, C), raster order."""
    batch, channels, height, width = x.shape
    x = x.view(batch, channels, height // window, window, width // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: -> (B, C, height, width)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, channels, height, width)


# ---------------------------------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------------------------------
class MambaVisionStage(nn.Module):
    """A stage of blocks at one resolution (NCHW in and out), followed by an optional :class:`Downsample`.

    ``forward`` returns ``(stage_output, next_stage_input)``: dense-prediction heads use the map before downsampling.
    """

    def __init__(self,
                 dim: int,
                 depth: int,
                 num_heads: int,
                 window_size: int,
                 conv: bool,
                 downsample: bool,
                 drop_path: Sequence[float],
                 mlp_ratio: float = MLP_RATIO,
                 drop: float = 0.0,
                 attn_drop: float = 0.0,
                 layer_scale: Optional[float] = None,
                 layer_scale_conv: Optional[float] = None,
                 with_cp: bool = False):
        super().__init__()
        self.conv = conv
        self.window_size = window_size
        self.with_cp = with_cp
        if conv:
            blocks = [ConvBlock(dim, drop_path[i], layer_scale_conv) for i in range(depth)]
        else:
            attention = set(attention_block_indices(depth))
            blocks = [
                MixerBlock(dim, num_heads, i in attention, mlp_ratio=mlp_ratio, drop=drop, attn_drop=attn_drop,
                           drop_path=drop_path[i], layer_scale=layer_scale) for i in range(depth)
            ]
        self.blocks = nn.ModuleList(blocks)
        self.downsample = Downsample(dim) if downsample else None

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.conv:
            x = self._run_blocks(x)
        else:
            height, width = x.shape[-2:]
            window = self.window_size
            # Rounded up as whole windows, not padded by (-size) % window: the same numbers, but under torch.export
            # with symbolic H, W the window shapes below stay simple products (several times faster to export).
            padded_h, padded_w = round_up(height, window), round_up(width, window)
            # Padded tokens are not masked: they enter the norms, the attention keys and the scan, as officially.
            x = F.pad(x, (0, padded_w - width, 0, padded_h - height))
            x = self._run_blocks(window_partition(x, window))
            x = crop_to(window_reverse(x, window, padded_h, padded_w), height, width)
        return x, (self.downsample(x) if self.downsample is not None else None)


# ---------------------------------------------------------------------------------------------------------------------
# Variant table
# ---------------------------------------------------------------------------------------------------------------------
ARCH_KEYS = ('depths', 'dim', 'in_dim', 'num_heads', 'window_size', 'drop_path_rate', 'layer_scale')

ARCH_SETTINGS: Dict[str, dict] = {
    'T': dict(depths=(1, 3, 8, 4), dim=80, in_dim=32, num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
              drop_path_rate=0.2, layer_scale=None),
    'T2': dict(depths=(1, 3, 11, 4), dim=80, in_dim=32, num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
               drop_path_rate=0.2, layer_scale=None),
    'S': dict(depths=(3, 3, 7, 5), dim=96, in_dim=64, num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
              drop_path_rate=0.2, layer_scale=None),
    'B': dict(depths=(3, 3, 10, 5), dim=128, in_dim=64, num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
              drop_path_rate=0.3, layer_scale=1e-5),
    'L': dict(depths=(3, 3, 10, 5), dim=196, in_dim=64, num_heads=(4, 8, 16, 32), window_size=(8, 8, 14, 7),
              drop_path_rate=0.3, layer_scale=1e-5),
    'L2': dict(depths=(3, 3, 12, 5), dim=196, in_dim=64, num_heads=(4, 8, 16, 32), window_size=(8, 8, 14, 7),
               drop_path_rate=0.3, layer_scale=1e-5),
    'L2-512-21k': dict(depths=(3, 3, 12, 5), dim=196, in_dim=64, num_heads=(4, 8, 16, 32),
                       window_size=(8, 8, 32, 16), drop_path_rate=0.3, layer_scale=1e-5),
    'L3-256-21k': dict(depths=(3, 3, 20, 10), dim=256, in_dim=64, num_heads=(4, 8, 16, 32),
                       window_size=(8, 8, 16, 8), drop_path_rate=0.5, layer_scale=1e-5),
    'L3-512-21k': dict(depths=(3, 3, 20, 10), dim=256, in_dim=64, num_heads=(4, 8, 16, 32),
                       window_size=(8, 8, 32, 16), drop_path_rate=0.5, layer_scale=1e-5),
}
# Aliases accepted for ``arch`` (case-insensitive): 'tiny', 'mambavision-t', 'mamba_vision_T', ...
_ARCH_ALIASES = {'tiny': 'T', 'tiny2': 'T2', 'small': 'S', 'base': 'B', 'large': 'L', 'large2': 'L2'}


def resolve_arch(arch: Union[str, dict]) -> dict:
    """Return the settings of a variant name (or alias) or validate a custom dict; errors list the valid choices."""
    if isinstance(arch, dict):
        missing = [k for k in ARCH_KEYS if k not in arch and k not in ('drop_path_rate', 'layer_scale')]
        unknown = [k for k in arch if k not in ARCH_KEYS]
        if missing or unknown:
            raise ValueError(f'MambaVision: a custom arch dict needs the keys {list(ARCH_KEYS[:5])} (optional: '
                             f'drop_path_rate, layer_scale); missing {missing}, unknown {unknown}')
        settings = {'drop_path_rate': 0.2, 'layer_scale': None, **arch}
        for key in ('depths', 'num_heads', 'window_size'):
            if len(settings[key]) != NUM_STAGES:
                raise ValueError(f'MambaVision: arch[{key!r}] needs {NUM_STAGES} values, got {settings[key]}')
        return settings
    if not isinstance(arch, str):
        raise TypeError(f'MambaVision: arch must be a name or a dict, got {type(arch).__name__}')
    key = arch.strip()
    for prefix in ('mamba_vision_', 'mambavision_', 'mambavision-', 'mamba-vision-'):
        if key.lower().startswith(prefix):
            key = key[len(prefix):]
    by_lower = {name.lower(): name for name in ARCH_SETTINGS}
    by_lower.update(_ARCH_ALIASES)
    name = by_lower.get(key.lower()) or by_lower.get(key.lower().replace('_', '-'))
    if name is None:
        raise ValueError(f'MambaVision: unknown arch {arch!r}; valid names are {sorted(ARCH_SETTINGS)} '
                         f'(or a dict with keys {list(ARCH_KEYS)})')
    return dict(ARCH_SETTINGS[name])


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------
class MambaVision(StagedBackbone):
    """MambaVision backbone returning a tuple of NCHW feature maps.

    Args:
        arch: a variant name from :data:`ARCH_SETTINGS` ('T', 'T2', 'S', 'B', 'L', 'L2', 'L2-512-21k', 'L3-256-21k',
            'L3-512-21k') or a dict with ``depths, dim, in_dim, num_heads, window_size`` (and optionally
            ``drop_path_rate, layer_scale``).
        in_channels: input image channels.
        out_indices: stages to return (any subset of 0..3, negative allowed). Stage ``i`` has stride ``4 * 2**i`` and
            ``dim * 2**i`` channels and is taken before its downsampling.
        out_norm: norm applied to each returned map: ``'ln2d'`` (channels-first LayerNorm, as the official
            detection/segmentation backbone), ``'bn'`` or ``None``.
        final_norm: apply the classifier's BatchNorm2d (``norm``) to the last stage before returning it; set it for
            classification with the official ImageNet heads.
        window_size: override the arch's windows, one int for all stages or one per stage (e.g. (8, 8, 112, 56) as in
            the official detection configs).
        drop_path_rate: stochastic depth, linear from 0 over all blocks; ``None`` takes the arch's value.
        drop_rate, attn_drop_rate: dropout after MLP/projection and on attention weights.
        layer_scale: override the arch's layer scale of the hybrid blocks (a float, or ``None`` for none).
        frozen_stages: -1 freezes nothing, 0 the stem, ``k >= 1`` the stem and stages ``0..k-1`` (with their output
            norms and downsampling).
        norm_eval: keep every BatchNorm in eval mode during training.
        with_cp: gradient checkpointing per block (saves memory, costs one extra forward).
        scan_backend: selective-scan backend of the mixers: ``None`` (default: Triton for CUDA tensors when
            triton imports, else the torch backend; ``MMMV_SCAN_BACKEND`` may force one), ``'triton'``, ``'torch'``
            or ``'auto'``.
        channels_last: run the stem and the two convolutional stages in channels-last memory format (their
            convolution weights are stored so, and the input is copied so): the same numbers, but cuDNN's NHWC
            convolutions and PyTorch's channels-last BatchNorm kernels instead of NCHW ones, whose BatchNorm backward
            reduces each channel in one thread block. On an H200 (bf16, batch 128) this cut MambaVision-T's GPU
            time per training step by about 30% (docs/benchmarks.md). The maps returned stay contiguous NCHW.
        compile: compile the backbone in place with ``torch.compile`` (``nn.Module.compile``: state-dict keys and
            checkpoints unchanged): ``True`` (torch's defaults), or a dict of torch.compile's arguments such as
            ``dict(dynamic=True)`` for detection's changing input sizes; ``False`` (default) runs eagerly.
            docs/compile.md.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix='backbone.', strict=True)`` loads weights (mmmv or
            official layout) in :meth:`init_weights`; ``None`` uses the official random initialisation.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'T',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 out_norm: Optional[str] = 'ln2d',
                 final_norm: bool = False,
                 window_size: Union[None, int, Sequence[int]] = None,
                 drop_path_rate: Optional[float] = None,
                 drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0,
                 layer_scale: Union[None, float, str] = 'arch',
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 scan_backend: Optional[str] = None,
                 channels_last: bool = True,
                 compile: Union[bool, dict] = False,
                 init_cfg: Optional[dict] = None,
                 **unknown):
        if unknown:
            raise TypeError(_unknown_keys_message(type(self).__name__, unknown, MambaVision.__init__))
        if not isinstance(channels_last, bool):
            raise TypeError(f'MambaVision: channels_last must be True or False, got {channels_last!r}')
        super().__init__()
        self.scan_backend = None if scan_backend is None else check_backend_name(scan_backend, 'MambaVision')
        settings = resolve_arch(arch)
        self.arch_settings = settings
        depths = tuple(settings['depths'])
        self.num_stages = len(depths)
        self.dims = [settings['dim'] * 2 ** i for i in range(self.num_stages)]
        self.strides = [4 * 2 ** i for i in range(self.num_stages)]
        windows = _per_stage(window_size if window_size is not None else settings['window_size'], 'window_size')
        self.window_size = windows
        drop_path_rate = settings['drop_path_rate'] if drop_path_rate is None else drop_path_rate
        layer_scale = settings['layer_scale'] if layer_scale == 'arch' else layer_scale
        self.out_indices = normalise_indices(out_indices, self.num_stages, 'MambaVision')
        if out_norm is not None and out_norm not in OUT_NORMS:
            raise ValueError(f'MambaVision: out_norm must be one of {sorted(OUT_NORMS)} or None, got {out_norm!r}')
        self.frozen_stages = frozen_stages
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'MambaVision: frozen_stages must be in [-1, {self.num_stages}], got {frozen_stages}')
        self.norm_eval = norm_eval
        self.init_cfg = init_cfg

        if final_norm and self.out_indices[-1] != self.num_stages - 1:
            raise ValueError('MambaVision: final_norm normalises the last stage, which out_indices '
                             f'{tuple(out_indices)} does not return')

        self.patch_embed = Stem(in_channels, settings['in_dim'], settings['dim'])
        # Stages after the last returned one are not built (they would be unused parameters under DDP).
        num_built = self.out_indices[-1] + 1
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths[:num_built]):
            start = sum(depths[:i])
            self.stages.append(MambaVisionStage(
                dim=self.dims[i], depth=depth, num_heads=settings['num_heads'][i], window_size=windows[i],
                conv=i < CONV_STAGES, downsample=i < num_built - 1, drop_path=dpr[start:start + depth],
                drop=drop_rate, attn_drop=attn_drop_rate, layer_scale=layer_scale, with_cp=with_cp))
        self.norm = nn.BatchNorm2d(self.dims[-1]) if final_norm else None
        for i in self.out_indices:
            if out_norm is not None:
                self.add_module(f'norm{i}', OUT_NORMS[out_norm](self.dims[i]))
        self.out_norm = out_norm
        self.channels_last = channels_last
        self.apply(_init_weights)
        if channels_last:
            for conv in self._convolutions():
                conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
        self._freeze_stages()
        self._compile_in_place(compile, 'MambaVision')

    # -- properties of the feature protocol ---------------------------------------------------------------------------
    @property
    def out_channels(self) -> List[int]:
        return [self.dims[i] for i in self.out_indices]

    @property
    def out_strides(self) -> List[int]:
        return [self.strides[i] for i in self.out_indices]

    def _convolutions(self) -> List[nn.Conv2d]:
        """The convolutions of the stem and of the convolutional stages with their downsamplings (`channels_last`)."""
        modules = [self.patch_embed, *self.stages[:CONV_STAGES]]
        return [m for module in modules for m in module.modules() if isinstance(m, nn.Conv2d)]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """x: (B, in_channels, H, W), any H, W -> one (B, dims[i], ceil(H/s_i), ceil(W/s_i)) map per out index."""
        if x.ndim != 4:
            raise ValueError(f'MambaVision expects an NCHW batch, got a tensor of shape {tuple(x.shape)}')
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            with use_scan_backend(self.scan_backend):
                out, x = stage(x)
            if i == self.num_stages - 1 and self.norm is not None:
                out = self.norm(out)
            if i in self.out_indices:
                norm = getattr(self, f'norm{i}', None)
                outs.append((norm(out) if norm is not None else out).contiguous())
        return tuple(outs)

    # -- weights ------------------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Official random init, then the ``init_cfg`` checkpoint if one is given (called by mmengine runners)."""
        self.apply(_init_weights)
        for module in self.modules():
            if isinstance(module, MambaVisionMixer):
                module.reset_dt_parameters()
        if self.init_cfg is not None:
            from ..checkpoint.convert import load_pretrained
            load_pretrained(self, self.init_cfg)
        self.is_init = True


def _init_weights(module: nn.Module) -> None:
    """The official initialisation: truncated normal Linear weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        if not getattr(module.weight, '_no_reinit', False):
            nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None and not getattr(module.bias, '_no_reinit', False):
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _per_stage(value: Union[int, Sequence[int]], name: str) -> List[int]:
    if isinstance(value, int):
        return [value] * NUM_STAGES
    value = list(value)
    if len(value) != NUM_STAGES or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f'MambaVision: {name} must be a positive int or {NUM_STAGES} positive ints, got {value}')
    return value


def _unknown_keys_message(owner: str, unknown: dict, init) -> str:
    valid = [n for n in init.__code__.co_varnames[1:init.__code__.co_argcount]]
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        hints.append(f'{key!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
    return f'{owner}: unknown config keys {", ".join(hints)}; valid keys are {valid}'


class MambaVisionClassifier(nn.Module):
    """The ImageNet classifier: backbone with its final BatchNorm, global average pooling and a linear head.

    Plain-PyTorch counterpart of ``configs/mambavision_t_in1k.py``; its state dict uses the keys of the converted
    classification checkpoints (``backbone.*``, ``head.fc.*``).
    """

    def __init__(self, arch: Union[str, dict] = 'T', num_classes: int = 1000, **backbone_kwargs):
        super().__init__()
        self.backbone = MambaVision(arch, out_indices=(NUM_STAGES - 1,), out_norm=None, final_norm=True,
                                    **backbone_kwargs)
        self.head = nn.Module()
        self.head.fc = nn.Linear(self.backbone.dims[-1], num_classes)
        nn.init.trunc_normal_(self.head.fc.weight, std=INIT_STD)
        nn.init.zeros_(self.head.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.backbone(x)[-1]
        return self.head.fc(feature.mean(dim=(2, 3)))
