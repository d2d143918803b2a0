"""Shared machinery for descentlab's own optimizers.

Every optimizer in this package has two update paths over the same state:

- a multi-tensor path built on ``torch._foreach_*`` (the default,
  ``foreach=None`` or ``True``), fast for many tensors;
- a plain per-parameter reference path (``foreach=False``), written to read
  like the paper, that the tests compare the fast path against.

``MultiTensorOptimizer.step`` does the bookkeeping both paths share: the
closure, skipping parameters without a gradient, ``maximize`` (on a negated
copy, so ``p.grad`` is never modified), lazy state initialisation and the
per-parameter step counter ``state["step"]`` (a 0-dim float32 tensor, as in
torch.optim). Subclasses implement ``_init_state``, ``_update_reference`` and
``_update_foreach``. Sparse gradients are refused (``refuse_sparse``, the one
message of every descentlab optimizer); a complex parameter reaches the hooks
as its real view, with real views of its (complex) state, as torch.optim does.

Multi-tensor paths may keep the temporaries of large tensors in persistent
buffers (``_scratch`` + ``foreach_into``): same kernels, same numbers, no
fresh large allocations per step. Methods whose update is an Adam direction
times something get that direction from torch's fused Adam kernel
(``_adam_direction``): one pass over memory instead of six, equal to the
reference path to rounding (the tests allow 1e-12 in float64).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor


def as_float(value: float | Tensor) -> float:
    """A hyperparameter as a Python float (torch allows a tensor lr)."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def check_lr(lr: float | Tensor) -> None:
    if not as_float(lr) >= 0.0:
        raise ValueError(f"invalid learning rate: lr={lr!r} (must be >= 0)")


def check_non_negative(name: str, value: float) -> None:
    if not value >= 0.0:
        raise ValueError(f"invalid {name}: {value!r} (must be >= 0)")


def check_beta(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"invalid {name}: {value!r} (must be in [0, 1))")


def check_betas(betas: Iterable[float], count: int = 2) -> None:
    betas = tuple(betas)
    if len(betas) != count:
        raise ValueError(f"invalid betas: {betas!r} (need {count} values)")
    for index, beta in enumerate(betas):
        check_beta(f"beta at index {index}", beta)


# Temporaries of at least this many bytes are written into persistent buffers:
# freshly allocated large blocks tend to come back from the OS page by page
# (page faults cost about as much as the arithmetic), small ones are cheap.
# The price is memory: each named buffer holds one more copy of the large
# parameters for the optimizer's life (Grams, AdamP, AdEMAMix, MARS, diffGrad
# with weight decay: 1 besides the Adam-direction buffers; Lion and EXAdam
# need only block-sized ones). ``adam_direction`` keeps one buffer per
# parameter of every size, on any device: where its fused kernel writes u.
SCRATCH_MIN_BYTES = 1 << 17


def is_large(p: Tensor) -> bool:
    """Whether temporaries shaped like ``p`` go into persistent buffers (CPU only:
    CUDA's caching allocator makes fresh temporaries cheap)."""
    return p.device.type == "cpu" and p.numel() * p.element_size() >= SCRATCH_MIN_BYTES


def split_small(params: list[Tensor]) -> tuple[list[list[int]], list[int]]:
    """(indices of small CPU tensors, grouped by dtype; indices of the others).

    A long chain of elementwise ops on many small CPU tensors is cheaper on their
    concatenation (one kernel per op, not a loop over tensors per foreach call);
    flattening and splitting cost several foreach calls, so it pays for long
    chains only (measured on 400 tensors: a win for EXAdam's 14 ops, a loss for
    Grams' 5). For correctly rounded ops (+, -, *, /, sqrt, abs, sign) an
    element's position changes no bit. ``flatten_dense_tensors`` of a single
    tensor is a view of it: do not modify it in place.
    """
    small: dict[torch.dtype, list[int]] = {}
    others: list[int] = []
    for i, p in enumerate(params):
        if p.device.type == "cpu" and not is_large(p):
            small.setdefault(p.dtype, []).append(i)
        else:  # large, or on an accelerator (where foreach kernels are fused)
            others.append(i)
    return list(small.values()), others


# Long chains of elementwise ops on large CPU tensors run a block at a time
# (``blocks``): 1 MiB per tensor keeps a block of every operand and temporary
# in a last-level cache, at few Python calls per op (4 blocks on 1M float32
# parameters); smaller blocks measured slower, Python overhead outgrowing the
# cache gain.
BLOCK_BYTES = 1 << 20


def blocks(
    owner: Any, tensors: tuple[Tensor, ...], buffer_names: tuple[str, ...]
) -> Iterator[tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]:
    """Aligned blocks of equally shaped contiguous tensors, with block-sized work buffers.

    ``tensors``: e.g. a parameter, its gradient and its moments. Yields, for
    each block in turn, (the block of every tensor as a 1-D view, one buffer
    per name in ``buffer_names`` shaped like it). An elementwise chain run on
    each block in turn equals the chain run on the whole tensors. The buffers
    persist on ``owner`` (outside any state dict), are shared by tensors of one
    size, and hold garbage between uses.
    """
    first = tensors[0]
    size = block_elements(first)
    cache = owner.__dict__.setdefault("_block_buffers", {})
    buffers = []
    for name in buffer_names:
        key = (name, first.dtype, first.device, first.numel(), size)
        if key not in cache:
            buffer = torch.empty(min(size, first.numel()), dtype=first.dtype, device=first.device)
            cache[key] = tuple(buffer[: len(part)] for part in first.view(-1).split(size))
        buffers.append(cache[key])
    parts = zip(*(t.view(-1).split(size) for t in tensors))
    if not buffers:
        yield from ((block, ()) for block in parts)
        return
    yield from zip(parts, zip(*buffers))


def per_param_list(owner: Any, name: str, params: list[Tensor], build: Callable[[list[Tensor]], Any]) -> Any:
    """``build(params)``, cached on ``owner`` (in its attribute ``name``) per
    parameter list, by the identity of its tensors."""
    cache = owner.__dict__.setdefault(name, {})
    key = tuple(map(id, params))
    entry = cache.get(key)
    if entry is None:
        if len(cache) > 64:  # parameter subsets vary (missed steps): keep the cache bounded
            cache.clear()
        # holding the list keeps its ids from being reused while the entry lives
        entry = cache[key] = (list(params), build(params))
    return entry[1]


def split_blockable(owner: Any, tensors: tuple[list[Tensor], ...]) -> tuple[list[int], list[int]]:
    """(indices for ``blocks``, the others) of lists of per-parameter tensors
    (params first, then e.g. grads and moments): large CPU parameters whose
    tensors are all contiguous go block by block.

    Which parameters are large is cached per parameter list on ``owner``
    (checking 400 small tensors costs ~0.5 ms a step); a stale entry could only
    send a tensor down the other path, which computes the same update.
    """
    params = tensors[0]
    large = per_param_list(owner, "_large_indices", params,
                           lambda ps: [i for i, p in enumerate(ps) if is_large(p)])
    blocked = [i for i in large if all(ts[i].is_contiguous() for ts in tensors)]
    if not blocked:
        return [], list(range(len(params)))
    chosen = set(blocked)
    return blocked, [i for i in range(len(params)) if i not in chosen]


def block_elements(t: Tensor) -> int:
    return max(1, BLOCK_BYTES // t.element_size())


def foreach_into(op: str, outs: list[Tensor | None] | None, *args: Any, **kwargs: Any) -> list[Tensor]:
    """``torch._foreach_<op>(*args, **kwargs)``, written into ``outs[i]`` where it is a tensor.

    The same ATen kernel either way (``torch.<op>(..., out=...)`` per tensor),
    so the numbers are identical; list arguments are indexed, others passed as is.
    ``outs=None``: no buffers at all (the plain foreach call).
    """
    if outs is None or all(o is None for o in outs):
        return list(getattr(torch, f"_foreach_{op}")(*args, **kwargs))
    single = getattr(torch, op)
    results: list[Tensor | None] = [None] * len(outs)
    rest = []
    for i, out in enumerate(outs):
        if out is None:
            rest.append(i)
        else:
            results[i] = single(*[a[i] if isinstance(a, list) else a for a in args], **kwargs, out=out)
    if rest:
        sub_args = [[a[i] for i in rest] if isinstance(a, list) else a for a in args]
        for i, r in zip(rest, getattr(torch, f"_foreach_{op}")(*sub_args, **kwargs)):
            results[i] = r
    return results  # type: ignore[return-value]


# torch's fused Adam kernel (``torch._fused_adam_``) runs on these; elsewhere
# ``_adam_direction`` falls back to a chain of foreach ops.
FUSED_ADAM_DEVICES = frozenset({"cpu", "cuda"})
FUSED_ADAM_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


def is_dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill exactly ``numel`` consecutive memory slots, in
    any dimension order (contiguous, channels_last, transposed: yes; expanded or
    sliced with a step: no)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def fused_adam_supported(p: Tensor) -> bool:
    return p.device.type in FUSED_ADAM_DEVICES and p.dtype in FUSED_ADAM_DTYPES and is_dense(p)


def fusable_indices(owner: Any, params: list[Tensor], *others: list[Tensor]) -> list[int]:
    """Indices of the parameters the fused Adam kernel may take with ``others``
    (gradients, moments: lists aligned with ``params``).

    The kernel walks raw memory: every tensor of a parameter must be dense
    with the parameter's layout (a transposed gradient is otherwise read in
    the wrong order, silently: measured). Device, dtype and density of the
    parameters are cached per parameter list on ``owner``; the strides of the
    others are compared every step (~0.1 ms per list of 400 tensors).
    """
    strides, supported = per_param_list(owner, "_fusable", params, lambda ps: (
        [p.stride() for p in ps], [i for i, p in enumerate(ps) if fused_adam_supported(p)]))
    if all(list(map(Tensor.stride, ts)) == strides for ts in others):
        return supported
    return [i for i in supported if all(same_layout(ts[i], params[i]) for ts in others)]


def same_layout(t: Tensor, p: Tensor) -> bool:
    """Whether ``t`` (shaped like the dense ``p``) has ``p``'s memory order: equal
    strides in every dimension of size > 1 (autograd may give size-1 dimensions
    other strides, pytorch/pytorch#106951)."""
    return all(a == b for a, b, size in zip(t.stride(), p.stride(), p.shape) if size > 1)


def scratch_buffers(
    owner: Any, name: str, params: list[Tensor], every: bool = False
) -> list[Tensor | None] | None:
    """Persistent work buffers ``name`` for the large ones of ``params`` (None for small;
    None instead of the list when none is large), for ``foreach_into``;
    ``every=True``: a buffer for every parameter, on any device.

    One buffer per (name, parameter), kept on ``owner`` (an optimizer) outside
    its state: not saved, not loaded, not copied with the optimizer; contents
    are garbage between uses. The assembled list is cached per parameter list,
    so a step over many small tensors pays one lookup.
    """
    lists = owner.__dict__.setdefault("_scratch_lists", {})
    key = (name, every, tuple(map(id, params)))
    hit = lists.get(key)
    if hit is not None and all(
        hit[1][i].shape == params[i].shape and hit[1][i].dtype == params[i].dtype for i in hit[2]
    ):
        return hit[1]
    buffers = owner.__dict__.setdefault("_scratch_buffers", {})
    out: list[Tensor | None] = []
    for p in params:
        if not (every or is_large(p)):
            out.append(None)
            continue
        entry = buffers.get((name, id(p)))
        if entry is None or entry[0] is not p or entry[1].shape != p.shape or entry[1].dtype != p.dtype:
            # holding p keeps its id from being reused while the entry lives
            entry = (p, torch.empty_like(p, memory_format=torch.preserve_format))
            buffers[(name, id(p))] = entry
        out.append(entry[1])
    if len(lists) > 64:  # parameter subsets vary (missed steps): keep the cache bounded
        lists.clear()
    large = [i for i, b in enumerate(out) if b is not None]
    lists[key] = (list(params), out if large else None, large)
    return out if large else None


def adam_direction(
    owner: Any, params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor], step: int, beta1: float, beta2: float, eps: float,
) -> list[Tensor]:
    """Adam's moment updates and direction, for parameters that share ``step``.

    In place: m <- lerp(m, g, 1 - beta1), v <- beta2 v + (1 - beta2) g^2.
    Returns u = m_hat / (sqrt(v_hat) + eps) (bias-corrected moments) in the
    persistent buffers "adam_direction" of ``owner``, valid until the next call.

    torch's fused Adam kernel does it in one pass: it subtracts
    lr * u from its "parameter", here a zeroed buffer with lr = -1.
    Unsupported devices, dtypes and layouts (see ``fusable_indices``) take
    the same chain of foreach ops as torch's foreach Adam (equal to rounding).
    """
    buffers: list[Tensor] = scratch_buffers(owner, "adam_direction", params, every=True)  # type: ignore[assignment]
    fused = fusable_indices(owner, params, grads, exp_avgs, exp_avg_sqs, buffers)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i in fused:
        groups[(params[i].device, params[i].dtype)].append(i)
    for (device, _), idx in groups.items():
        out = [buffers[i] for i in idx]
        torch._foreach_zero_(out)
        # the kernel reads the (already counted) step; one tensor serves all
        step_tensor = torch.tensor(float(step), dtype=torch.float32, device=device)
        torch._fused_adam_(
            out, [grads[i] for i in idx], [exp_avgs[i] for i in idx], [exp_avg_sqs[i] for i in idx],
            [], [step_tensor] * len(idx), lr=-1.0, beta1=beta1, beta2=beta2,
            weight_decay=0.0, eps=eps, amsgrad=False, maximize=False,
        )
    fused_set = set(fused)
    rest = [i for i in range(len(params)) if i not in fused_set]
    if rest:
        m, v, g = ([ts[i] for i in rest] for ts in (exp_avgs, exp_avg_sqs, grads))
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        out = [buffers[i] for i in rest]
        foreach_into("sqrt", out, v)
        torch._foreach_div_(out, math.sqrt(1 - beta2**step))
        torch._foreach_add_(out, eps)
        foreach_into("div", out, m, out)  # out aliasing an input is fine elementwise
        torch._foreach_div_(out, 1 - beta1**step)
    return buffers


def refuse_sparse(owner: Any, grad: Tensor | None) -> None:
    """The one error every descentlab optimizer raises for a sparse gradient."""
    if grad is not None and grad.is_sparse:
        raise RuntimeError(
            f"{type(owner).__name__} does not support sparse gradients "
            "(e.g. from nn.Embedding(sparse=True)); use dense gradients"
        )


def refuse_complex(owner: Any, p: Tensor, reason: str) -> None:
    """The one error for complex parameters, from optimizers whose method is not
    defined on them (``reason`` says why)."""
    if p.is_complex():
        raise RuntimeError(
            f"{type(owner).__name__} does not support complex parameters ({reason}); "
            "use real parameters, e.g. torch.view_as_real of the complex tensor"
        )


def check_gradients(owner: Any, params: Iterable[Tensor], complex_reason: str | None = None) -> None:
    """``refuse_sparse`` for every gradient of ``params``; with ``complex_reason``,
    ``refuse_complex`` for every parameter that has a gradient."""
    for p in params:
        if p.grad is not None:
            refuse_sparse(owner, p.grad)
            if complex_reason is not None:
                refuse_complex(owner, p, complex_reason)


def as_real(t: Any) -> Any:
    """``torch.view_as_real(t)`` for a complex tensor, anything else as it is."""
    return torch.view_as_real(t) if isinstance(t, Tensor) and t.is_complex() else t


def real_view(owner: Any, p: Tensor) -> Tensor:
    """The real view of ``p`` (``p`` itself if real), the same tensor object at every
    step while ``p``'s data is unchanged (caches keyed by tensor identity, such as
    ``scratch_buffers``, then hit). Complex parameters are updated through it as
    torch.optim does: the optimizer acts on (real, imaginary) pairs as on any
    real tensor with one more trailing dimension of size 2."""
    if not p.is_complex():
        return p
    cache = owner.__dict__.setdefault("_real_view_cache", {})
    entry = cache.get(id(p))
    if entry is None or entry[0] is not p or entry[1].data_ptr() != p.data_ptr() or entry[1].shape[:-1] != p.shape:
        # holding p keeps its id from being reused while the entry lives
        entry = cache[id(p)] = (p, torch.view_as_real(p.detach()))
    return entry[1]


class MultiTensorOptimizer(torch.optim.Optimizer):
    """Base class: closure, grad gathering, ``maximize``, state init, steps.

    Class attribute ``counts_steps``: whether parameters carry
    ``state["step"]`` (methods without bias correction, such as Lion, skip it).
    """

    counts_steps: bool = True

    def __init__(self, params: Any, defaults: dict[str, Any]):
        defaults.setdefault("maximize", False)
        defaults.setdefault("foreach", None)
        super().__init__(params, defaults)

    # --- hooks for subclasses -------------------------------------------------
    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update_reference(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], steps: list[int]
    ) -> None:
        """Plain per-parameter update; ``steps[i]`` is parameter i's step (1-based)."""
        raise NotImplementedError

    def _update_foreach(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], step: int
    ) -> None:
        """Multi-tensor update of parameters that all share the step ``step``."""
        raise NotImplementedError

    # Persistent work buffers and the fused Adam direction (module functions
    # above, so that optimizers with their own step, such as MoMo, share them).
    def _scratch(self, name: str, params: list[Tensor], every: bool = False) -> list[Tensor | None] | None:
        return scratch_buffers(self, name, params, every)

    def _adam_direction(
        self, params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor], step: int, beta1: float, beta2: float, eps: float,
    ) -> list[Tensor]:
        return adam_direction(self, params, grads, exp_avgs, exp_avg_sqs, step, beta1, beta2, eps)

    # --- the shared step --------------------------------------------------------
    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            refuse_sparse(self, p.grad)
            state = self.state[p]
            if len(state) == 0:
                if self.counts_steps:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                self._init_state(p, state, group)
            grad = p.grad
            if p.is_complex():  # updated as its real view, as torch.optim does
                p, grad = self._alias_real_view(p)
            params.append(p)
            grads.append(grad)
        return params, grads

    def _alias_real_view(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """(real view of the complex ``p``, of its grad), the view keyed in
        ``self.state`` to real views of p's state for the hooks, until the step ends."""
        view = real_view(self, p)
        self.state[view] = {k: as_real(v) for k, v in self.state[p].items()}
        self.__dict__.setdefault("_aliased_views", []).append(view)
        return view, torch.view_as_real(p.grad)

    def _drop_real_views(self) -> None:
        for view in self.__dict__.pop("_aliased_views", []):
            self.state.pop(view, None)

    @staticmethod
    def _uses_foreach(group: dict[str, Any]) -> bool:
        return group["foreach"] is None or bool(group["foreach"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update; returns the closure's loss (``None`` without a closure)."""
        try:
            return self._step(closure)
        finally:  # real views of complex parameters never outlive the step (nor reach state_dict)
            self._drop_real_views()

    def _step(self, closure: Callable[[], Any] | None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = self._gather(group)
            if not params:
                continue
            foreach = self._uses_foreach(group)
            if group["maximize"]:
                # A negated copy: p.grad itself must stay untouched.
                grads = torch._foreach_neg(grads) if foreach else [-g for g in grads]
            if not self.counts_steps:
                if foreach:
                    self._update_foreach(group, params, grads, 0)
                else:
                    self._update_reference(group, params, grads, [0] * len(params))
                continue
            step_tensors = [self.state[p]["step"] for p in params]
            if foreach:
                torch._foreach_add_(step_tensors, 1.0)
            else:
                for s in step_tensors:
                    s += 1.0
            # one stack + tolist: a single sync instead of one .item() per tensor
            steps = [int(s) for s in torch.stack(step_tensors).tolist()]
            if not foreach:
                self._update_reference(group, params, grads, steps)
                continue
            # Parameters that missed steps (grad None) have other counts and
            # bias corrections: update each count's parameters together.
            by_step: dict[int, list[int]] = defaultdict(list)
            for index, t in enumerate(steps):
                by_step[t].append(index)
            for t, indices in by_step.items():
                if len(indices) == len(params):
                    self._update_foreach(group, params, grads, t)
                else:
                    self._update_foreach(
                        group, [params[i] for i in indices], [grads[i] for i in indices], t
                    )
        return loss
