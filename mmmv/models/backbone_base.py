"""What mmmv's OpenMMLab backbones share: frozen stages, ``norm_eval``, the stages a narrowed backbone does not
build, no-weight-decay names, the checking of ``out_indices`` and the ``compile`` option (docs/compile.md)."""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.fx.experimental.symbolic_shapes import statically_known_true


class StagedBackbone(nn.Module):
    """Base of a backbone with a ``patch_embed``, a ``ModuleList`` of stages (the attribute named by ``STAGES_ATTR``,
    each stage possibly ending with a ``downsample``) and optional per-output norms ``norm{i}``.

    Subclasses set ``num_stages``, ``frozen_stages`` (-1: nothing; 0: the patch embedding; k: also stages 0..k-1 with
    their output norms) and ``norm_eval`` (BatchNorms stay in eval mode while training).
    """

    STAGES_ATTR = 'stages'

    @property
    def built_stages(self) -> nn.ModuleList:
        return getattr(self, self.STAGES_ATTR)

    def skipped_state_prefixes(self) -> List[str]:
        """State-dict prefixes of a full model that this one does not build (stages after the last output)."""
        attr, built = self.STAGES_ATTR, len(self.built_stages)
        return [f'{attr}.{built - 1}.downsample.'] + [f'{attr}.{i}.' for i in range(built, self.num_stages)]

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = [self.patch_embed]
        for i in range(min(self.frozen_stages, len(self.built_stages))):
            modules.append(self.built_stages[i])
            if hasattr(self, f'norm{i}'):
                modules.append(getattr(self, f'norm{i}'))
        return modules

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'StagedBackbone':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def _compile_in_place(self, compile: Union[bool, dict, None], owner: str) -> None:
        """The ``compile`` option: ``nn.Module.compile`` with `compile_options`, so that the module stays itself
        (state-dict keys, checkpoints, EMA copies and DDP wrapping unchanged) and only its calls are compiled."""
        self.compile_options = compile_options(compile, owner)
        if self.compile_options is None:
            return
        from ..ops.selective_scan.interface import untraced_torch_backend
        untraced_torch_backend()  # built before tracing: the torch scan backend runs eagerly between graphs
        self.compile(**inductor_workarounds(self.compile_options))
        # the first iteration then sits for minutes with nothing logged: say so once, where the run's log goes, with
        # the inductor options the workarounds turned off
        off = workaround_options(self.compile_options)
        workarounds = f'; off for symbolic sizes on this torch: {", ".join(off)}' if off else ''
        from mmengine.logging import print_log
        print_log(f'{owner}: compile={compile!r}: the backbone is compiled on its first call (the first training '
                  'iteration, the first validation pass and each recompilation take minutes on a GPU; '
                  f'TORCH_LOGS=recompiles names each recompilation{workarounds}), docs/compile.md', logger='current')

    def no_weight_decay(self) -> set:
        """Names of the parameters marked ``_no_weight_decay`` (the scans' A and D)."""
        return no_weight_decay_names(self)


def crop_to(x: torch.Tensor, height: int, width: int, dims: Tuple[int, int] = (2, 3)) -> torch.Tensor:
    """The top-left `height` x `width` of the map whose H and W are `dims` ((2, 3): NCHW; (1, 2): NHWC): a slice (a
    view) in eager mode and for sizes known while torch.compile or torch.export traces it; for symbolic sizes not
    known to be equal, gathered into a new tensor.

    A slice's gradient is written through a slice view of a zero map, contiguous or not as the map was padded or not;
    with symbolic sizes that question is a guard, and each padding case (H, W, both, neither) was another graph
    (MambaVision's windows, VM-UNet's decoder). The gather's gradient (an index_add into zeros) asks nothing of the
    sizes. ``statically_known_true`` answers without adding a guard: static sizes (a fixed-size compile) keep the
    slice, and a crop to the same size is no op at all.
    """
    if not torch.compiler.is_compiling():
        return x.narrow(dims[0], 0, height).narrow(dims[1], 0, width)
    for dim, size in zip(dims, (height, width)):
        if statically_known_true(x.shape[dim] == size):
            continue
        if statically_known_true(x.shape[dim] != size):
            x = x.narrow(dim, 0, size)
        else:
            x = x.index_select(dim, torch.arange(size, device=x.device))
    return x


def no_weight_decay_names(model: nn.Module) -> set:
    return {name for name, p in model.named_parameters() if getattr(p, '_no_weight_decay', False)}


def normalise_indices(indices: Union[int, Sequence[int]], num_stages: int, owner: str) -> Tuple[int, ...]:
    """Sorted non-negative stage indices; a ValueError naming ``owner`` for empty, out-of-range or repeated ones."""
    indices = (indices,) if isinstance(indices, int) else tuple(indices)
    if not indices:
        raise ValueError(f'{owner}: out_indices must name at least one stage')
    result = []
    for index in indices:
        if not isinstance(index, int) or not -num_stages <= index < num_stages:
            raise ValueError(f'{owner}: out_indices entry {index!r} is out of range for {num_stages} stages')
        result.append(index % num_stages)
    if len(set(result)) != len(result):
        raise ValueError(f'{owner}: out_indices {indices} name a stage twice')
    return tuple(sorted(result))


# torch.compile's keyword arguments that the ``compile`` option passes on (``model`` is the backbone itself)
COMPILE_KEYS = ('backend', 'mode', 'dynamic', 'fullgraph', 'options', 'disable')


# Inductor options turned off for graphs with symbolic sizes, each with the first torch release seen without the
# failure: (option, fixed in, applies to dynamic=True on every torch version).
# - torch < 2.12 (pytorch/pytorch#181563, fixed by #181793): the coalescing analysis of tilings asserts on symbolic
#   sizes (AssertionError in tiling_utils.get_pw_red_splits; MambaVision-T with dynamic=True on torch 2.11). Inductor's
#   config says the analysis does not apply to symbolic sizes, so dynamic graphs lose nothing without it on any torch.
# - torch < 2.13: mix-order reductions (the two reductions of a norm's backward in one kernel) slice their workspace
#   with an unparenthesised symbolic stride in the generated wrapper (``workspace_0[0 * a + b * c : ...]``), so the
#   final reduction's view fails (RuntimeError: shape '[1568, 320]' is invalid for input of size 1568; Mask R-CNN
#   MambaVision-T with dynamic=True on torch 2.11, in the first backward). torch 2.13's wrapper parenthesises it.
COALESCING_OPTION = 'triton.coalesce_tiling_analysis'
MIX_ORDER_OPTION = 'triton.mix_order_reduction'
SYMBOLIC_SIZE_WORKAROUNDS = ((COALESCING_OPTION, '2.12', True), (MIX_ORDER_OPTION, '2.13', False))


def workaround_options(kwargs: dict) -> List[str]:
    """The inductor options of ``SYMBOLIC_SIZE_WORKAROUNDS`` to turn off for torch.compile keyword arguments `kwargs`:
    with ``dynamic=True`` those of the torch versions listed (the coalescing analysis on all), with automatic dynamic
    shapes (``dynamic`` unset) those of the versions listed. None for other backends, ``dynamic=False`` or
    ``disable=True``; never an option the user set or one this inductor does not have."""
    dynamic = kwargs.get('dynamic')
    if kwargs.get('backend', 'inductor') != 'inductor' or kwargs.get('disable') or dynamic is False:
        return []
    import torch._inductor.config as inductor_config
    options = kwargs.get('options') or {}
    return [key for key, fixed_in, always_when_dynamic in SYMBOLIC_SIZE_WORKAROUNDS
            if key not in options and hasattr(inductor_config.triton, key.split('.')[1])
            and (torch.__version__ < fixed_in or (dynamic is True and always_when_dynamic))]


def inductor_workarounds(kwargs: dict) -> dict:
    """`kwargs` for ``nn.Module.compile`` with the options of `workaround_options` off; `kwargs` itself when there
    are none. A ``mode`` becomes its options (torch.compile takes one of the two)."""
    off = workaround_options(kwargs)
    if not off:
        return kwargs
    from torch._inductor import list_mode_options
    options = dict(kwargs.get('options') or {})
    if kwargs.get('mode') is not None:
        options = {**list_mode_options(kwargs['mode'], kwargs.get('dynamic')), **options}
    options.update(dict.fromkeys(off, False))
    return {**{k: v for k, v in kwargs.items() if k != 'mode'}, 'options': options}


def compile_options(compile: Union[bool, dict, None], owner: str) -> Optional[dict]:
    """``compile`` as ``torch.compile`` keyword arguments (True: torch's defaults), or None when off; a TypeError /
    ValueError naming `owner` and the fix for anything else."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return {}
    if isinstance(compile, dict):
        unknown = sorted(set(compile) - set(COMPILE_KEYS))
        if unknown:
            raise ValueError(f'{owner}: unknown compile keys {unknown}; compile=dict(...) takes torch.compile\'s '
                             f'arguments {list(COMPILE_KEYS)}, e.g. compile=dict(dynamic=True)')
        return dict(compile)
    raise TypeError(f'{owner}: compile must be True, False or a dict of torch.compile arguments '
                    f'{list(COMPILE_KEYS)}, got {compile!r}; e.g. compile=True or compile=dict(dynamic=True)')
