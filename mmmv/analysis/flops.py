"""FLOPs and parameters of a model, including what the usual counters miss: the selective scan and SDPA attention.

The usual counters (mmengine's ``get_model_complexity_info`` / ``FlopAnalyzer``, fvcore's ``FlopCountAnalysis``, and
the ``get_flops`` tools of mmdet and mmseg built on them) trace the model with ``torch.jit`` and count the traced
convolutions, linears, matmuls and norms. They see neither the selective scan (a compiled op in mamba_ssm, so an
unknown node of 0 FLOPs) nor ``F.scaled_dot_product_attention`` (one ``aten::scaled_dot_product_attention`` node,
for which they have no handle). :func:`count_complexity` gives three counts side by side:

- ``usual``: mmengine's ``FlopAnalyzer`` on the model, with every :func:`mmmv.ops.selective_scan` and
  :func:`mmmv.ops.cross_selective_scan` call made one opaque traced op (``mmmv_flops::*``). On mmmv's torch scan
  backend the tracer would otherwise count some of the scan's internal matmuls; opaque, the scan is missed exactly as
  the counters miss mamba_ssm's op in the official models.
- ``scan``: every scan call counted analytically from its shapes and flags (:func:`selective_scan_flops`,
  :func:`cross_selective_scan_flops`).
- ``attention``: every ``F.scaled_dot_product_attention`` call counted analytically (:func:`attention_flops`), added
  only when the usual counter left its node unsupported, so nothing is counted twice.

Convention: one multiply-add (MAC) is one FLOP, as the usual counters count convolutions, linears and matmuls, and
every other arithmetic operation (add, multiply, exp, softplus) is one FLOP. Counted per call of the scan, with
u (batch, D, L) and A (D, N)::

    per (batch, channel, token, state), 5 FLOPs = 2 MACs + 3 other:
        dt * A (1), exp (1), (dt * u) * B (1)              the decay exp(dt A) and the input dt B u
        h = exp(dt A) * h + dt B u (1 MAC)                 the recurrence
        y += C * h (1 MAC)                                 the read-out sum_n C h
    per (batch, channel, token):
        dt * u (1); + delta_bias (1, if given); softplus (1, if delta_softplus);
        y += D * u (1 MAC, if D is given); y * silu(z) (2: silu and the product, if z is given)

so ``B*D*L*(5N + 1 + [bias] + [softplus] + [D] + 2[z])`` FLOPs. With 2 FLOPs per multiply-add (the count of
arithmetic operations) the per-state part is 7 and D costs 2: :attr:`Complexity.scan_2mac`. The four-direction scan
(``cross_selective_scan``, u (batch, Di, L)) is the scan over 4*Di channels plus 3*B*Di*L adds merging the directions.
Attention: q (..., Lq, E), k (..., Lk, E), v (..., Lk, Ev) cost ``prod(...) * Lq * Lk * (E + Ev)`` MACs (q k^T and
attn v); the scale and the softmax are not counted, as the usual counters do not count activations.

This module needs torch only; :func:`count_complexity` also needs mmengine (imported when called).
"""
import dataclasses
import functools
import math
import sys
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.cross_scan import NUM_DIRECTIONS, cross_selective_scan
from ..ops.selective_scan.interface import selective_scan

# The scan count per (batch, channel, token, state), and per (batch, channel, token) for the optional parts.
SCAN_MACS_PER_STATE = 2  # the recurrence h = a h + b, the read-out y += C h
SCAN_OPS_PER_STATE = 3  # dt * A, exp, (dt u) * B
SCAN_OPS_PER_TOKEN = 1  # dt * u
SCAN_OPS_DELTA_BIAS = 1
SCAN_OPS_SOFTPLUS = 1
SCAN_MACS_D = 1  # y += D u
SCAN_OPS_Z = 2  # silu(z), y * silu(z)
MERGE_OPS_PER_DIRECTION = 1  # cross_selective_scan sums its 4 directions: 3 adds per (batch, channel, token)
GIGA, MEGA = 1e9, 1e6

# The functions the models call, kept before any patching (the patches replace module attributes only).
_SELECTIVE_SCAN = selective_scan
_CROSS_SELECTIVE_SCAN = cross_selective_scan
_SDPA = F.scaled_dot_product_attention
_SCAN_OP_NAMES = ('mmmv_flops::selective_scan', 'mmmv_flops::cross_selective_scan')
_SDPA_OP_NAME = 'aten::scaled_dot_product_attention'


# ---------------------------------------------------------------------------------------------------------------------
# The analytic counts
# ---------------------------------------------------------------------------------------------------------------------
def _scan_macs_and_ops(batch: int, dim: int, length: int, state: int, *, with_D: bool, with_z: bool,
                       with_delta_bias: bool, delta_softplus: bool) -> Tuple[int, int]:
    """(multiply-adds, other operations) of one selective scan, per the module docstring."""
    tokens = batch * dim * length
    macs = tokens * (SCAN_MACS_PER_STATE * state + SCAN_MACS_D * with_D)
    ops = tokens * (SCAN_OPS_PER_STATE * state + SCAN_OPS_PER_TOKEN + SCAN_OPS_DELTA_BIAS * with_delta_bias
                    + SCAN_OPS_SOFTPLUS * delta_softplus + SCAN_OPS_Z * with_z)
    return macs, ops


def selective_scan_flops(batch: int, dim: int, length: int, state: int, *, with_D: bool = False,
                         with_z: bool = False, with_delta_bias: bool = False, delta_softplus: bool = False,
                         flops_per_mac: int = 1) -> int:
    """FLOPs of one ``selective_scan`` on u (batch, dim, length) with A (dim, state); see the module docstring."""
    macs, ops = _scan_macs_and_ops(batch, dim, length, state, with_D=with_D, with_z=with_z,
                                   with_delta_bias=with_delta_bias, delta_softplus=delta_softplus)
    return flops_per_mac * macs + ops


def cross_selective_scan_flops(batch: int, inner: int, length: int, state: int, *, with_D: bool = False,
                               with_delta_bias: bool = False, delta_softplus: bool = True,
                               flops_per_mac: int = 1) -> int:
    """FLOPs of one ``cross_selective_scan`` on u (batch, inner, length): a scan over 4*inner channels, then the
    merge of the 4 directions (3 adds per output element)."""
    directions = NUM_DIRECTIONS
    scan = selective_scan_flops(batch, directions * inner, length, state, with_D=with_D,
                                with_delta_bias=with_delta_bias, delta_softplus=delta_softplus,
                                flops_per_mac=flops_per_mac)
    return scan + MERGE_OPS_PER_DIRECTION * (directions - 1) * batch * inner * length


def attention_flops(batch: int, q_len: int, kv_len: int, qk_dim: int, v_dim: int, flops_per_mac: int = 1) -> int:
    """FLOPs of q k^T and attn v for ``batch`` (batch x heads, or windows x heads) independent attentions."""
    return flops_per_mac * batch * q_len * kv_len * (qk_dim + v_dim)


# ---------------------------------------------------------------------------------------------------------------------
# Opaque ops: the scan as one traced node, as the usual counters see mamba_ssm's compiled scan
# ---------------------------------------------------------------------------------------------------------------------
@torch.library.custom_op('mmmv_flops::selective_scan', mutates_args=())
def _opaque_selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                           delta_softplus: bool, backend: Optional[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    y, last_state = _SELECTIVE_SCAN(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                    delta_softplus=delta_softplus, return_last_state=True, backend=backend)
    return y, last_state


@torch.library.custom_op('mmmv_flops::cross_selective_scan', mutates_args=())
def _opaque_cross_selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                                 C: torch.Tensor, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                                 delta_softplus: bool, height: int, width: int, backend: Optional[str],
                                 fused: Optional[bool]) -> torch.Tensor:
    return _CROSS_SELECTIVE_SCAN(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus,
                                 height=height, width=width, backend=backend, fused=fused)


def _selective_scan_as_one_op(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                              return_last_state=False, backend=None):
    """``selective_scan`` through ``mmmv_flops::selective_scan`` (forward only)."""
    y, last_state = _opaque_selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), backend)
    return (y, last_state) if return_last_state else y


def _cross_selective_scan_as_one_op(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, *, height,
                                    width, backend=None, fused=None):
    """``cross_selective_scan`` through ``mmmv_flops::cross_selective_scan`` (forward only)."""
    return _opaque_cross_selective_scan(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), int(height),
                                        int(width), backend, fused)


# ---------------------------------------------------------------------------------------------------------------------
# Counting the calls
# ---------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ExtraCounts:
    """What one part of a model spent in the ops the usual counters miss (FLOPs, 1 multiply-add = 1 FLOP)."""
    scan: int = 0
    scan_2mac: int = 0  # the scan with 2 FLOPs per multiply-add
    scan_calls: int = 0
    attention: int = 0
    attention_calls: int = 0

    def add(self, other: 'ExtraCounts') -> 'ExtraCounts':
        return ExtraCounts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


def _argument(args: tuple, kwargs: dict, index: int, name: str, default=None):
    return args[index] if len(args) > index else kwargs.get(name, default)


def _shape(tensor: torch.Tensor) -> Tuple[int, ...]:
    """The shape as Python ints (a jit trace hands out sizes as tensors)."""
    return tuple(int(size) for size in tensor.shape)


def _selective_scan_call_flops(flops_per_mac: int, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                               delta_softplus=False, *_, **__) -> int:
    batch, dim, length = _shape(u)
    return selective_scan_flops(batch, dim, length, _shape(A)[1], with_D=D is not None, with_z=z is not None,
                                with_delta_bias=delta_bias is not None, delta_softplus=bool(delta_softplus),
                                flops_per_mac=flops_per_mac)


def _cross_selective_scan_call_flops(flops_per_mac: int, u, delta, A, B, C, D=None, delta_bias=None,
                                     delta_softplus=True, **_) -> int:
    batch, inner, length = _shape(u)
    return cross_selective_scan_flops(batch, inner, length, _shape(A)[1], with_D=D is not None,
                                      with_delta_bias=delta_bias is not None, delta_softplus=bool(delta_softplus),
                                      flops_per_mac=flops_per_mac)


def _sdpa_call_flops(args: tuple, kwargs: dict) -> int:
    query, key, value = (_shape(_argument(args, kwargs, i, name)) for i, name in enumerate(('query', 'key', 'value')))
    batch_dims = max(len(query), len(key)) - 2
    padded = [(1, ) * (batch_dims + 2 - len(shape)) + shape[:-2] for shape in (query, key)]
    batch = math.prod(max(q, k) for q, k in zip(*padded))  # the broadcast batch (and head) dims
    return attention_flops(batch, query[-2], key[-2], query[-1], value[-1])


class ExtraFlopCounter:
    """Count the FLOPs of every selective scan and SDPA call made inside the ``with`` block.

    The counter replaces, for the duration of the block, every module attribute that holds
    :func:`mmmv.ops.selective_scan`, :func:`mmmv.ops.cross_selective_scan` or ``F.scaled_dot_product_attention``
    (outside torch itself) by a counting wrapper: mmmv's models import the scan functions by name at import time, and
    call ``F.scaled_dot_product_attention`` through ``torch.nn.functional``. A scan called inside another counted scan
    (``cross_selective_scan`` runs ``selective_scan``) is not counted again.

    Args:
        opaque_scan: run each scan as one ``mmmv_flops::*`` op, which a jit trace records as one node (forward only:
            no autograd). Used by :func:`count_complexity`.

    Example::

        with ExtraFlopCounter() as counter:
            model(images)
        print(counter.total.scan / 1e9, 'GFLOPs in selective scans')
    """

    def __init__(self, opaque_scan: bool = False):
        self.opaque_scan = opaque_scan
        self.by_part: Dict[str, ExtraCounts] = {}
        self._patched: List[Tuple[object, str, object]] = []
        self._hooks: list = []
        self._parts: List[str] = []
        self._depth = threading.local()

    # -- results ------------------------------------------------------------------------------------------------------
    @property
    def total(self) -> ExtraCounts:
        return functools.reduce(ExtraCounts.add, self.by_part.values(), ExtraCounts())

    def part(self, name: str) -> ExtraCounts:
        """The counts made while the model's child ``name`` (see :meth:`track`) ran."""
        return self.by_part.get(name, ExtraCounts())

    def _record(self, **counts: int) -> None:
        part = self._parts[-1] if self._parts else ''
        self.by_part[part] = self.by_part.get(part, ExtraCounts()).add(ExtraCounts(**counts))

    # -- attribution to a model's parts -------------------------------------------------------------------------------
    def track(self, model: nn.Module) -> 'ExtraFlopCounter':
        """Attribute the counts to the direct children of ``model`` (by name) while the block lasts."""
        def enter(name: str) -> None:
            self._parts.append(name)

        def leave() -> None:
            self._parts.pop()

        for name, child in model.named_children():
            self._hooks.append(child.register_forward_pre_hook(lambda *_, name=name: enter(name)))
            self._hooks.append(child.register_forward_hook(lambda *_: leave()))
        return self

    # -- the wrappers -------------------------------------------------------------------------------------------------
    def _scan_wrapper(self, original: Callable, opaque: Callable, count: Callable) -> Callable:
        @functools.wraps(original)
        def counted(*args, **kwargs):
            if getattr(self._depth, 'value', 0):
                return original(*args, **kwargs)
            self._record(scan=count(1, *args, **kwargs), scan_2mac=count(2, *args, **kwargs), scan_calls=1)
            self._depth.value = 1
            try:
                return (opaque if self.opaque_scan else original)(*args, **kwargs)
            finally:
                self._depth.value = 0
        return counted

    def _sdpa_wrapper(self) -> Callable:
        @functools.wraps(_SDPA)
        def counted(*args, **kwargs):
            self._record(attention=_sdpa_call_flops(args, kwargs), attention_calls=1)
            return _SDPA(*args, **kwargs)
        return counted

    def __enter__(self) -> 'ExtraFlopCounter':
        replacements = {
            id(_SELECTIVE_SCAN): (_SELECTIVE_SCAN, self._scan_wrapper(
                _SELECTIVE_SCAN, _selective_scan_as_one_op, _selective_scan_call_flops)),
            id(_CROSS_SELECTIVE_SCAN): (_CROSS_SELECTIVE_SCAN, self._scan_wrapper(
                _CROSS_SELECTIVE_SCAN, _cross_selective_scan_as_one_op, _cross_selective_scan_call_flops)),
            id(_SDPA): (_SDPA, self._sdpa_wrapper()),
        }
        for module_name, module in list(sys.modules.items()):
            namespace = getattr(module, '__dict__', None)
            if namespace is None or module_name == __name__:
                continue
            # torch's own modules keep their SDPA, except the F.scaled_dot_product_attention that models call
            torch_internal = module_name.split('.')[0] == 'torch' and module_name != 'torch.nn.functional'
            for attribute, value in list(namespace.items()):
                original, replacement = replacements.get(id(value), (None, None))
                if replacement is None or original is not value or (original is _SDPA and torch_internal):
                    continue
                setattr(module, attribute, replacement)
                self._patched.append((module, attribute, original))
        return self

    def __exit__(self, *exc_info) -> None:
        for module, attribute, original in reversed(self._patched):
            setattr(module, attribute, original)
        self._patched.clear()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


# ---------------------------------------------------------------------------------------------------------------------
# The whole count
# ---------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Complexity:
    """Parameters and FLOPs of one forward (1 multiply-add = 1 FLOP), for the whole model or a set of its parts."""
    params: int
    usual: int  # what mmengine's FlopAnalyzer counts, the scan hidden from it
    scan: int
    scan_2mac: int
    attention: int  # SDPA the usual counter missed; 0 when it counted it (see attention_in_usual)
    attention_in_usual: bool = False

    @property
    def total(self) -> int:
        return self.usual + self.scan + self.attention


@dataclasses.dataclass
class ComplexityReport:
    """:func:`count_complexity`'s answer: the whole model, each requested group of parts, and what was missed."""
    model: Complexity
    parts: Dict[str, Complexity]
    unsupported_ops: Dict[str, int]  # ops the usual counter left at 0 FLOPs (other than the scan and SDPA), by name


def _params(modules: Sequence[nn.Module]) -> int:
    seen = {id(p): p for module in modules for p in module.parameters()}
    return sum(p.numel() for p in seen.values())


def count_complexity(model: nn.Module,
                     inputs: Union[torch.Tensor, Tuple[torch.Tensor, ...]],
                     parts: Optional[Dict[str, Sequence[str]]] = None) -> ComplexityReport:
    """Count the parameters and the FLOPs of ``model(*inputs)``: the usual count, the scans and the attention.

    One forward runs, traced by mmengine's ``FlopAnalyzer`` (the usual count), under :class:`ExtraFlopCounter` with
    the scans opaque (the extra counts). The model should be in eval mode; no gradients are computed.

    Args:
        model: the module to count; its ``forward`` takes ``inputs`` (bind other arguments beforehand).
        inputs: a tensor or a tuple of tensors.
        parts: optional groups of the model's direct children to report apart, e.g.
            ``{'backbone + neck': ['backbone', 'neck']}``.

    Returns:
        A :class:`ComplexityReport`.
    """
    try:
        from mmengine.analysis import FlopAnalyzer
    except ImportError as error:
        raise ImportError(f'count_complexity needs mmengine for the usual count: pip install mmengine ({error})')
    inputs = inputs if isinstance(inputs, tuple) else (inputs, )
    analyzer = FlopAnalyzer(model, inputs).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad(), ExtraFlopCounter(opaque_scan=True).track(model) as counter:
        usual_total = analyzer.total()
        usual_by_module = analyzer.by_module()
        unsupported = dict(analyzer.unsupported_ops())

    traced_scans = sum(unsupported.pop(name, 0) for name in _SCAN_OP_NAMES)
    if traced_scans != counter.total.scan_calls:
        raise RuntimeError(f'count_complexity: {counter.total.scan_calls} scan calls were counted but the trace holds '
                           f'{traced_scans} opaque scan nodes; the usual count may include part of a scan')
    missed_sdpa = unsupported.pop(_SDPA_OP_NAME, 0)
    attention_in_usual = counter.total.attention_calls > 0 and missed_sdpa == 0
    if missed_sdpa not in (0, counter.total.attention_calls):
        raise RuntimeError(f'count_complexity: {counter.total.attention_calls} SDPA calls were counted but the usual '
                           f'counter missed {missed_sdpa} of them')

    def complexity(modules: Sequence[nn.Module], usual: int, extra: ExtraCounts) -> Complexity:
        return Complexity(params=_params(modules), usual=usual, scan=extra.scan, scan_2mac=extra.scan_2mac,
                          attention=0 if attention_in_usual else extra.attention,
                          attention_in_usual=attention_in_usual)

    children = dict(model.named_children())
    report_parts = {}
    for label, names in (parts or {}).items():
        missing = [n for n in names if n not in children]
        if missing:
            raise ValueError(f'count_complexity: the model has no child {missing}; its children: {list(children)}')
        extra = functools.reduce(ExtraCounts.add, (counter.part(n) for n in names), ExtraCounts())
        report_parts[label] = complexity([children[n] for n in names], sum(usual_by_module[n] for n in names), extra)
    return ComplexityReport(model=complexity([model], usual_total, counter.total), parts=report_parts,
                            unsupported_ops=unsupported)


# ---------------------------------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------------------------------
def giga(flops: int) -> str:
    """G (1e9) with 2 decimals, or 3 significant digits below 1 G (small test models)."""
    value = flops / GIGA
    return f'{value:.2f}' if value >= 1 or value == 0 else f'{value:.3g}'


def format_table(columns: Dict[str, Complexity]) -> str:
    """One line per count, one column per counted scope (G = 1e9 FLOPs, M = 1e6 parameters)."""
    rows = [
        ('params (M)', lambda c: f'{c.params / MEGA:.2f}'),
        ('FLOPs as the usual counters (G)', lambda c: giga(c.usual)),
        ('+ selective scan (G)', lambda c: giga(c.scan)),
        ('+ attention q@k^T, attn@v (G)', lambda c: 'in usual' if c.attention_in_usual else giga(c.attention)),
        ('= total (G)', lambda c: giga(c.total)),
        ('selective scan at 2 FLOPs/MAC (G)', lambda c: giga(c.scan_2mac)),
    ]
    label_width = max(len(label) for label, _ in rows)
    widths = [max(12, len(name)) for name in columns]
    lines = [' ' * label_width + ''.join(f'  {name:>{w}}' for name, w in zip(columns, widths))]
    for label, cell in rows:
        cells = ''.join(f'  {cell(c):>{w}}' for c, w in zip(columns.values(), widths))
        lines.append(f'{label:<{label_width}}{cells}')
    return '\n'.join(lines)


def summary_row(name: str, shape: Tuple[int, int], c: Complexity) -> str:
    """A markdown table row: | name | H x W | params (M) | usual (G) | scan (G) | attention (G) | total (G) |."""
    attention = 'in usual' if c.attention_in_usual else giga(c.attention)
    return (f'| {name} | {shape[0]}x{shape[1]} | {c.params / MEGA:.2f} | {giga(c.usual)} | {giga(c.scan)} '
            f'| {attention} | {giga(c.total)} |')
