"""VSS blocks (VMamba, Liu et al. 2024) and the VM-UNet encoder (Ruan & Xiang 2024).

An independent implementation written for mmmv. It matches the "v0" VSS block of VMamba and VM-UNet in architecture,
parameter names and shapes (so converted official checkpoints load, see :mod:`mmmv.checkpoint.vmunet`), not in code:

- :class:`SS2D` scans an H x W map along four token orders (row-major, column-major and both reversed) with one
  selective scan whose B and C are grouped by direction; the orders are handled by
  :func:`mmmv.ops.cross_selective_scan`, so no permuted copies are built here and no compiled extension is needed;
- :class:`VSSBlock` is ``x + DropPath(SS2D(LN(x)))``, without an MLP;
- :class:`VSSEncoder` is the VMamba-v0 / VM-UNet encoder as an OpenMMLab backbone: a 4x4 patch embedding, stages of
  VSS blocks joined by 2x2 patch merging, NCHW outputs of any stages, any input size (maps are zero-padded to even
  sizes where a patch embedding or merging needs it); with ``out_type='unet'`` it returns the stage inputs and the
  bottleneck that :class:`mmmv.models.vmunet_head.VMUNetHead` decodes.

Inside the blocks maps are channels-last ``(B, H, W, C)``, as in the official models. This file depends on torch
only; the OpenMMLab registration lives in :mod:`mmmv.registry`.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..ops import cross_selective_scan
from ..ops.selective_scan import scan_backend as use_scan_backend
from ..ops.selective_scan.interface import check_backend_name
from .backbone_base import StagedBackbone, normalise_indices
from .mambavision import DropPath, inverse_softplus_dt, round_up

# SS2D hyper-parameters of every released v0 model (VMamba-T/S/B v0 and VM-UNet).
SS2D_D_STATE = 16
SS2D_EXPAND = 2
SS2D_D_CONV = 3
SS2D_DT_MIN, SS2D_DT_MAX, SS2D_DT_INIT_FLOOR = 1e-3, 0.1, 1e-4
NUM_DIRECTIONS = 4  # row-major, column-major, and both reversed
PATCH_SIZE = 4
MERGE_SIZE = 2  # patch merging gathers 2 x 2 tokens
LN_EPS = 1e-5  # nn.LayerNorm's default, used by every norm of the official models
INIT_STD = 0.02
OUT_TYPES = ('output', 'unet')


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------
def pad_to_multiple(x: torch.Tensor, multiple: int, channels_last: bool) -> torch.Tensor:
    """Zero-pad the bottom and right of a map so that H and W are multiples of ``multiple`` (a no-op if they are)."""
    height, width = (x.shape[1:3] if channels_last else x.shape[2:4])
    # round_up, not (-size) % multiple: the same numbers, simpler shapes under torch.export with symbolic H, W;
    # traced (torch.compile, torch.export) with symbolic sizes it always pads: a branch on the amounts would be a
    # guard, a graph per case (dynamo answers isinstance(SymInt, int) with True, so the test cannot be on the sizes'
    # type); statically_known_true adds no guard, and skips the pad where sizes known while tracing need none
    pad_h, pad_w = round_up(height, multiple) - height, round_up(width, multiple) - width
    if torch.compiler.is_compiling():
        if statically_known_true(pad_h == 0) and statically_known_true(pad_w == 0):
            return x
    elif not (pad_h or pad_w):
        return x
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h) if channels_last else (0, pad_w, 0, pad_h))


class PatchEmbed2D(nn.Module):
    """(B, in_channels, H, W) -> Conv2d(k=s=4) -> (B, ceil(H/4), ceil(W/4), dim) -> LayerNorm."""

    def __init__(self, in_channels: int, dim: int, patch_size: int = PATCH_SIZE):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(pad_to_multiple(x, self.patch_size, channels_last=False))
        return self.norm(x.permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """2x2 token gather -> LayerNorm(4C) -> Linear(4C, 2C, no bias); (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C).

    The four tokens of a 2x2 cell are concatenated in the official order: (0, 0), (1, 0), (0, 1), (1, 1) as
    (row, column) offsets. Odd maps are zero-padded at the bottom/right (the official model drops the last row/column).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(MERGE_SIZE * MERGE_SIZE * dim, eps=LN_EPS)
        self.reduction = nn.Linear(MERGE_SIZE * MERGE_SIZE * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(x, MERGE_SIZE, channels_last=True)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Linear(C, scale*C, no bias) -> scale x scale pixel rearrange -> LayerNorm(C/scale).

    (B, H, W, C) -> (B, scale*H, scale*W, C/scale). ``scale=2`` is VM-UNet's ``PatchExpand2D`` (its constructor takes
    the output width; this one takes the input width ``dim``), ``scale=4`` its final expansion.
    """

    def __init__(self, dim: int, scale: int = 2):
        super().__init__()
        if dim % scale:
            raise ValueError(f'{type(self).__name__}: dim {dim} is not divisible by scale {scale}')
        self.scale = scale
        self.out_dim = dim // scale
        self.expand = nn.Linear(dim, scale * dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        s = self.scale
        # channel index (p1 * s + p2) * out_dim + c goes to pixel (h * s + p1, w * s + p2)
        x = self.expand(x).view(batch, height, width, s, s, self.out_dim)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height * s, width * s, self.out_dim)
        return self.norm(x)


class FinalPatchExpand4x(PatchExpand):
    """VM-UNet's last expansion: Linear(C, 4C, no bias) -> 4x4 rearrange -> LayerNorm(C/4)."""

    def __init__(self, dim: int):
        super().__init__(dim, scale=4)


class SS2D(nn.Module):
    """The 2D selective-scan mixer of VMamba v0 / VM-UNet on channels-last maps (B, H, W, C) -> (B, H, W, C).

    ``in_proj`` splits into x and a gate z (Di = expand * C channels each); x goes through a depthwise 3x3 conv and
    SiLU, then four selective scans (one per direction, each with its own x_proj/dt_proj weights, A, D and dt bias,
    B/C grouped by direction) whose outputs are merged back to raster order and summed; then LayerNorm(Di), the gate
    SiLU(z) and ``out_proj``. The scan runs in float32 (float64 for float64 inputs) whatever the input dtype.

    Parameters (official names and shapes; R = dt_rank, N = d_state, K = 4 directions):
    ``x_proj_weight`` (K, R + 2N, Di), ``dt_projs_weight`` (K, Di, R), ``dt_projs_bias`` (K, Di), ``A_logs`` (K*Di, N),
    ``Ds`` (K*Di,), plus ``in_proj``, ``conv2d``, ``out_norm``, ``out_proj``.
    """

    def __init__(self,
                 dim: int,
                 d_state: int = SS2D_D_STATE,
                 expand: int = SS2D_EXPAND,
                 dt_rank: Optional[int] = None,
                 d_conv: int = SS2D_D_CONV,
                 dropout: float = 0.0):
        super().__init__()
        self.dim = dim
        self.d_state = d_state
        self.d_inner = int(expand * dim)
        self.dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        inner, rank, k = self.d_inner, self.dt_rank, NUM_DIRECTIONS
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv2d = nn.Conv2d(inner, inner, d_conv, padding=(d_conv - 1) // 2, groups=inner, bias=True)
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * d_state, inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, inner, rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, inner))
        self.A_logs = nn.Parameter(torch.empty(k * inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * inner))
        self.out_norm = nn.LayerNorm(inner, eps=LN_EPS)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.reset_ssm_parameters()

    def reset_ssm_parameters(self) -> None:
        """The official initialisation of the stacked parameters, which the generic Linear init does not touch:
        x_proj as nn.Linear's default (uniform +-Di^-0.5), dt_proj uniform +-R^-0.5 with Mamba's dt bias,
        A = 1..N per channel (S4D-real), D = 1."""
        with torch.no_grad():
            bound = self.d_inner ** -0.5
            self.x_proj_weight.uniform_(-bound, bound)
            bound = self.dt_rank ** -0.5
            self.dt_projs_weight.uniform_(-bound, bound)
            for k in range(NUM_DIRECTIONS):
                self.dt_projs_bias[k].copy_(
                    inverse_softplus_dt(self.d_inner, SS2D_DT_MIN, SS2D_DT_MAX, SS2D_DT_INIT_FLOOR))
            state = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_logs.device)
            self.A_logs.copy_(torch.log(state).expand_as(self.A_logs))
            self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        # (B, Di, L) raster, stored token-major (channels contiguous; a view when the conv returns channels-last):
        # every scan direction then reads whole rows of channels, and the projections are plain matmuls
        u = x.permute(0, 2, 3, 1).reshape(batch, height * width, self.d_inner).transpose(1, 2)
        y = self.scan(u, height, width)
        y = y.transpose(1, 2).reshape(batch, height, width, self.d_inner)
        # the scan's float32 output meets the norm in the norm's dtype (float32 under autocast, as officially)
        y = self.out_norm(y.to(self.out_norm.weight.dtype)) * F.silu(z)
        return self.dropout(self.out_proj(y))

    def scan(self, u: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """u: (B, Di, H*W) raster -> the sum of the four directions' scans, (B, Di, H*W) raster, float32 or higher.

        The per-direction projections are applied to the raster tokens: they act token by token, so this equals
        projecting the four permuted copies as the official model does. Their outputs stay token-major views
        (no copies), which the fused Triton scan reads in place.
        """
        batch, _, length = u.shape
        k, width_dbl, _ = self.x_proj_weight.shape
        dtype = torch.promote_types(u.dtype, torch.float32)
        tokens = u.transpose(1, 2)  # (B, L, Di)
        x_dbl = (tokens @ self.x_proj_weight.reshape(k * width_dbl, -1).t()).view(batch, length, k, width_dbl)
        x_dbl = x_dbl.to(dtype)  # whole, so that B and C stay views of one token-major tensor
        dts, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=3)
        # per direction: (k, B*L, R) @ (k, R, Di) -> (k, B*L, Di), seen as (B, k, Di, L)
        delta = torch.bmm(dts.permute(2, 0, 1, 3).reshape(k, batch * length, self.dt_rank),
                          self.dt_projs_weight.transpose(1, 2).to(dts.dtype))
        delta = delta.view(k, batch, length, self.d_inner).permute(1, 0, 3, 2)
        return cross_selective_scan(
            u.to(dtype), delta.to(dtype), -torch.exp(self.A_logs.to(dtype)), B.permute(0, 2, 3, 1),
            C.permute(0, 2, 3, 1), D=self.Ds.to(dtype), delta_bias=self.dt_projs_bias.to(dtype).view(-1),
            delta_softplus=True, height=height, width=width)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}'


class VSSBlock(nn.Module):
    """``x + DropPath(SS2D(LayerNorm(x)))`` on (B, H, W, C); no MLP (VMamba v0, VM-UNet)."""

    def __init__(self, dim: int, drop_path: float = 0.0, attn_drop_rate: float = 0.0, d_state: int = SS2D_D_STATE):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.self_attention = SS2D(dim, d_state=d_state, dropout=attn_drop_rate)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, with_cp: bool) -> torch.Tensor:
    """Apply blocks in order, each under gradient checkpointing when ``with_cp`` and gradients are needed."""
    for block in blocks:
        if with_cp and x.requires_grad:
            x = cp.checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


def make_blocks(dim: int, drop_path: Sequence[float], attn_drop_rate: float, d_state: int) -> nn.ModuleList:
    return nn.ModuleList(VSSBlock(dim, rate, attn_drop_rate, d_state) for rate in drop_path)


# ---------------------------------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------------------------------
class VSSStage(nn.Module):
    """VSS blocks at one resolution, then an optional :class:`PatchMerging2D` (the official ``VSSLayer``).

    ``forward`` maps (B, H, W, C) to ``(stage_output, next_stage_input)``; the second is None without downsampling.
    """

    def __init__(self,
                 dim: int,
                 drop_path: Sequence[float],
                 downsample: bool,
                 attn_drop_rate: float = 0.0,
                 d_state: int = SS2D_D_STATE,
                 with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.blocks = make_blocks(dim, drop_path, attn_drop_rate, d_state)
        self.downsample = PatchMerging2D(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        x = run_blocks(self.blocks, x, self.with_cp)
        return x, (self.downsample(x) if self.downsample is not None else None)


# ---------------------------------------------------------------------------------------------------------------------
# Variant table
# ---------------------------------------------------------------------------------------------------------------------
ARCH_KEYS = ('depths', 'embed_dim', 'drop_path_rate')
# Stage i has embed_dim * 2**i channels (patch merging doubles them). The VMamba v0 rates are the official
# ImageNet ones; VM-UNet's model class defaults to 0.2 (its ISIC configs use 0.2 or 0.3).
ARCH_SETTINGS: Dict[str, dict] = {
    'vmunet': dict(depths=(2, 2, 2, 2), embed_dim=96, drop_path_rate=0.2),
    'tiny': dict(depths=(2, 2, 9, 2), embed_dim=96, drop_path_rate=0.2),
    'small': dict(depths=(2, 2, 27, 2), embed_dim=96, drop_path_rate=0.3),
    'base': dict(depths=(2, 2, 27, 2), embed_dim=128, drop_path_rate=0.5),
}
_ARCH_ALIASES = {'t': 'tiny', 's': 'small', 'b': 'base', 'vm-unet': 'vmunet', 'vm_unet': 'vmunet'}
_ARCH_PREFIXES = ('vmamba-v0-', 'vmamba_v0_', 'vmamba-', 'vmamba_', 'vssm-', 'vssm_', 'v0-', 'v0_')


def resolve_arch(arch: Union[str, dict]) -> dict:
    """The settings of a variant name (case-insensitive; 'T', 'vmamba-s', 'vssm_base' work) or a validated dict."""
    if isinstance(arch, dict):
        unknown = [k for k in arch if k not in ARCH_KEYS]
        missing = [k for k in ARCH_KEYS[:2] if k not in arch]
        if missing or unknown:
            raise ValueError(f'VSSEncoder: a custom arch dict needs the keys {list(ARCH_KEYS[:2])} (optional: '
                             f'drop_path_rate); missing {missing}, unknown {unknown}')
        depths = tuple(arch['depths'])
        if not depths or not all(isinstance(d, int) and d >= 0 for d in depths):
            raise ValueError(f'VSSEncoder: arch depths must be non-negative ints, got {arch["depths"]}')
        if not isinstance(arch['embed_dim'], int) or arch['embed_dim'] <= 0:
            raise ValueError(f'VSSEncoder: arch embed_dim must be a positive int, got {arch["embed_dim"]!r}')
        return {'drop_path_rate': 0.2, **arch, 'depths': depths}
    if not isinstance(arch, str):
        raise TypeError(f'VSSEncoder: arch must be a name or a dict, got {type(arch).__name__}')
    key = arch.strip().lower()
    for prefix in _ARCH_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    name = key if key in ARCH_SETTINGS else _ARCH_ALIASES.get(key)
    if name is None:
        raise ValueError(f'VSSEncoder: unknown arch {arch!r}; valid names are {sorted(ARCH_SETTINGS)} '
                         f"(or 'T', 'S', 'B', or a dict with keys {list(ARCH_KEYS)})")
    return dict(ARCH_SETTINGS[name])


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------
class VSSEncoder(StagedBackbone):
    """VMamba-v0 / VM-UNet encoder returning a tuple of NCHW feature maps.

    Stage ``i`` has ``embed_dim * 2**i`` channels and stride ``4 * 2**i``; a map of H x W gives stage maps of
    ``ceil(H / 4 / 2**i)`` rows (odd maps are zero-padded before the patch embedding and each merging).

    Args:
        arch: 'vmunet' (VM-UNet's encoder: depths 2, 2, 2, 2, embed_dim 96), 'tiny', 'small', 'base' (VMamba v0:
            depths (2, 2, 9, 2) / (2, 2, 27, 2) / (2, 2, 27, 2), embed_dim 96 / 96 / 128) or a dict with
            ``depths, embed_dim`` (optional ``drop_path_rate``).
        in_channels: image channels of the patch embedding.
        out_indices: stages to return (negative allowed).
        out_type: ``'output'`` returns, per index, the stage's output (after its blocks, before the patch merging
            that follows): the usual pyramid for FPN/UPerNet. ``'unet'`` returns, per index, the stage's *input*
            (stage 0: the patch-embedding output; stage i > 0: the merged output of stage i - 1), followed by the
            last stage's output (the bottleneck): ``len(out_indices) + 1`` maps, what VM-UNet's decoder
            (:class:`~mmmv.models.vmunet_head.VMUNetHead`) takes, with ``out_indices=(0, 1, 2, 3)``.
        out_norm: ``'ln'`` adds a LayerNorm (``norm{i}``) to each returned stage output, as VMamba's detection and
            segmentation backbones; None returns raw maps. ``out_type='unet'`` needs None (VM-UNet adds raw maps).
        gray_to_rgb: repeat a 1-channel input to ``in_channels`` channels (VM-UNet does this for grey images).
        drop_path_rate: stochastic depth, linear from 0 over all blocks; None takes the arch's value.
        drop_rate: dropout after the patch embedding (the official ``pos_drop``).
        attn_drop_rate: dropout on each SS2D output.
        frozen_stages: -1 freezes nothing, 0 the patch embedding, ``k >= 1`` also stages ``0..k-1`` (with their
            output norms and the merging that ends them).
        norm_eval: keep BatchNorm layers in eval mode during training, as other OpenMMLab backbones (VSS layers
            have only LayerNorms, which keep no running statistics, so this changes nothing here).
        with_cp: gradient checkpointing per block.
        scan_backend: selective-scan backend: None (Triton for CUDA tensors when triton imports, else torch;
            ``MMMV_SCAN_BACKEND`` may force one), 'triton', 'torch' or 'auto'.
        compile: compile the encoder in place with ``torch.compile`` (``nn.Module.compile``: state-dict keys and
            checkpoints unchanged): True (torch's defaults) or a dict of torch.compile's arguments, e.g.
            ``dict(dynamic=True)``; False (default) runs eagerly. docs/compile.md.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix='backbone.', strict=True)``: converted mmmv
            weights, an official VMamba-v0 ImageNet checkpoint or a VM-UNet checkpoint (converted on the fly);
            None keeps the official random initialisation.
    """

    STAGES_ATTR = 'layers'

    def __init__(self,
                 arch: Union[str, dict] = 'vmunet',
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = (0, 1, 2, 3),
                 out_type: str = 'output',
                 out_norm: Optional[str] = 'ln',
                 gray_to_rgb: bool = False,
                 drop_path_rate: Optional[float] = None,
                 drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 scan_backend: Optional[str] = None,
                 compile: Union[bool, dict] = False,
                 init_cfg: Optional[dict] = None):
        super().__init__()
        settings = resolve_arch(arch)
        self.arch_settings = settings
        depths = settings['depths']
        self.num_stages = len(depths)
        self.dims = [settings['embed_dim'] * 2 ** i for i in range(self.num_stages)]
        self.strides = [PATCH_SIZE * MERGE_SIZE ** i for i in range(self.num_stages)]
        self.out_indices = normalise_indices(out_indices, self.num_stages, 'VSSEncoder')
        if out_type not in OUT_TYPES:
            raise ValueError(f'VSSEncoder: out_type must be one of {OUT_TYPES}, got {out_type!r}')
        if out_norm not in ('ln', None):
            raise ValueError(f"VSSEncoder: out_norm must be 'ln' or None, got {out_norm!r}")
        if out_type == 'unet' and out_norm is not None:
            raise ValueError("VSSEncoder: out_type='unet' returns raw maps, as VM-UNet adds them to its decoder; "
                             'set out_norm=None')
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'VSSEncoder: frozen_stages must be in [-1, {self.num_stages}], got {frozen_stages}')
        self.out_type = out_type
        self.in_channels = in_channels
        self.gray_to_rgb = gray_to_rgb
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.scan_backend = None if scan_backend is None else check_backend_name(scan_backend, 'VSSEncoder')
        self.init_cfg = init_cfg
        drop_path_rate = settings['drop_path_rate'] if drop_path_rate is None else drop_path_rate

        self.patch_embed = PatchEmbed2D(in_channels, self.dims[0])
        self.pos_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        # 'output' builds only the stages up to the last returned one (unused parameters would break DDP);
        # 'unet' needs all of them for the bottleneck.
        num_built = self.num_stages if out_type == 'unet' else self.out_indices[-1] + 1
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.layers = nn.ModuleList()
        for i in range(num_built):
            start = sum(depths[:i])
            self.layers.append(VSSStage(
                self.dims[i], dpr[start:start + depths[i]], downsample=i < num_built - 1,
                attn_drop_rate=attn_drop_rate, with_cp=with_cp))
        if out_norm is not None:
            for i in self.out_indices:
                self.add_module(f'norm{i}', nn.LayerNorm(self.dims[i], eps=LN_EPS))
        self.apply(init_vss_weights)
        self._freeze_stages()
        self._compile_in_place(compile, 'VSSEncoder')

    # -- properties of the feature protocol ---------------------------------------------------------------------------
    @property
    def out_channels(self) -> List[int]:
        channels = [self.dims[i] for i in self.out_indices]
        return channels + [self.dims[-1]] if self.out_type == 'unet' else channels

    @property
    def out_strides(self) -> List[int]:
        strides = [self.strides[i] for i in self.out_indices]
        return strides + [self.strides[-1]] if self.out_type == 'unet' else strides

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """x: (B, in_channels, H, W), any H, W -> NCHW maps (see ``out_type``)."""
        x = self._check_input(x)
        x = self.pos_drop(self.patch_embed(x))
        outs = []
        with use_scan_backend(self.scan_backend):
            for i, stage in enumerate(self.layers):
                if self.out_type == 'unet' and i in self.out_indices:
                    outs.append(x)
                out, x = stage(x)
                if self.out_type == 'output' and i in self.out_indices:
                    norm = getattr(self, f'norm{i}', None)
                    outs.append(norm(out) if norm is not None else out)
        if self.out_type == 'unet':
            outs.append(out)
        return tuple(o.permute(0, 3, 1, 2).contiguous() for o in outs)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f'VSSEncoder expects an NCHW batch, got a tensor of shape {tuple(x.shape)}')
        channels = x.shape[1]
        if channels == 1 and self.gray_to_rgb and self.in_channels > 1:
            return x.expand(-1, self.in_channels, -1, -1)
        if channels != self.in_channels:
            hint = ' (pass gray_to_rgb=True to repeat a grey channel)' if channels == 1 else ''
            raise ValueError(f'VSSEncoder: expected {self.in_channels} input channels, got {channels}{hint}')
        return x

    # -- weights ------------------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Official random init, then the ``init_cfg`` checkpoint if one is given (called by mmengine runners)."""
        reset_vss_weights(self)
        if self.init_cfg is not None:
            from ..checkpoint.vmunet import load_vss_pretrained
            load_vss_pretrained(self, self.init_cfg)
        self.is_init = True


# ---------------------------------------------------------------------------------------------------------------------
# Weight init
# ---------------------------------------------------------------------------------------------------------------------
def init_vss_weights(module: nn.Module) -> None:
    """The official initialisation of Linear and LayerNorm layers (convolutions keep PyTorch's default)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def reset_vss_weights(model: nn.Module) -> None:
    """Re-draw the official random initialisation of every VSS layer in ``model``."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
        elif isinstance(module, SS2D):
            module.reset_ssm_parameters()
    model.apply(init_vss_weights)
