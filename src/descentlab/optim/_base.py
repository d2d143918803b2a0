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

Memory: between steps an optimizer holds its state plus one work buffer of at
most ``BLOCK_BYTES`` per device (``work_buffer``; MoMo's ``adam_direction``
excepted). Multi-tensor paths walk their tensors in chunks that fit it
(``work_chunks``: small tensors packed together, large contiguous ones a
block at a time), so temporaries are block-sized and nothing large is
allocated per step. Methods whose update is an Adam direction
times something get that direction from torch's fused Adam kernel
(``adam_direction_into``): one pass instead of six, equal to the reference
path to rounding (the tests allow 1e-12 in float64).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, NamedTuple

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


# CPU tensors of at least this many bytes are "large": freshly allocated large
# temporaries tend to come back from the OS page by page (page faults cost
# about as much as the arithmetic), small ones are cheap. Paths that go block
# by block (``split_blockable``) take the large ones; ``scratch_buffers`` (kept
# for MoMo's ``adam_direction``) gives them persistent full-size buffers.
SCRATCH_MIN_BYTES = 1 << 17


def is_large(p: Tensor) -> bool:
    """Whether ``p`` counts as large (CPU only: CUDA's caching allocator makes
    fresh temporaries cheap)."""
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


# The size of the one work buffer an optimizer keeps per device
# (``work_buffer``), shared by every tensor and every temporary: a method with
# k temporaries walks large tensors in blocks of BLOCK_BYTES / k bytes per
# tensor (``blocks``, ``work_chunks``). Each block costs a few Python calls per
# op (measured: ~10% of Grams' step on 1M float32 parameters in 8 blocks, where
# keeping blocks in cache gained nothing); the price of larger blocks is memory.
BLOCK_BYTES = 1 << 20


def work_buffer(owner: Any, device: torch.device, nbytes: int) -> Tensor:
    """At least ``nbytes`` (at most ``BLOCK_BYTES``) of work space ``owner`` keeps on
    ``device``: its only memory besides the state between steps (outside any
    state dict, not saved or loaded; garbage between uses). It grows to what
    the largest chunk needs; callers view it as their dtype."""
    if nbytes > BLOCK_BYTES:
        raise ValueError(f"work space of {nbytes} bytes asked for, more than BLOCK_BYTES={BLOCK_BYTES}")
    cache = owner.__dict__.setdefault("_work_buffer", {})
    buffer = cache.get(device)
    if buffer is None or buffer.numel() < nbytes:
        # views of the old buffer go with it (cached chunk views, and lists of them)
        for name in ("_packed_views", "_block_views", "_fusable"):
            owner.__dict__.pop(name, None)
        buffer = cache[device] = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return buffer


def work_slots(owner: Any, like: Tensor, count: int, width: int | None = None) -> tuple[Tensor, ...]:
    """``count`` 1-D slices of ``width`` elements (default: ``slot_elements``) of the
    work buffer, in ``like``'s dtype and device."""
    width = slot_elements(like, count) if width is None else width
    space = work_buffer(owner, like.device, width * count * like.element_size())
    space = space[: width * count * like.element_size()].view(like.dtype)
    return tuple(space[k * width: (k + 1) * width] for k in range(count))


def slot_elements(like: Tensor, count: int) -> int:
    """Elements of ``like``'s dtype per slot when the work buffer holds ``count`` slots."""
    return max(1, BLOCK_BYTES // (max(1, count) * like.element_size()))


def blocks(
    owner: Any, tensors: tuple[Tensor, ...], buffer_names: tuple[str, ...]
) -> Iterator[tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]:
    """Aligned blocks of equally shaped contiguous tensors, with block-sized work buffers.

    ``tensors``: e.g. a parameter, its gradient and its moments. Yields, for
    each block in turn, (the block of every tensor as a 1-D view, one buffer
    per name in ``buffer_names`` shaped like it). An elementwise chain run on
    each block in turn equals the chain run on the whole tensors. The buffers
    are slots of ``owner``'s one work buffer, hold garbage, and are reused by
    the next block.
    """
    first = tensors[0]
    size = min(slot_elements(first, len(buffer_names)), first.numel())
    parts = zip(*(t.view(-1).split(size) for t in tensors))
    if not buffer_names:
        yield from ((block, ()) for block in parts)
        return
    for block, buffers in zip(parts, _block_views(owner, first, len(buffer_names), size)):
        yield block, tuple(b for (b,) in buffers)


class Chunk(NamedTuple):
    """A piece of the work of ``work_chunks``: aligned lists of pieces of the tensors.

    ``index[j]``: which tensor piece j comes from. ``pieces[l][j]``: piece j of
    the l-th list (a whole tensor, or a 1-D block of a large one). ``buffers[k][j]``:
    work space shaped (and strided) like ``pieces[0][j]``, garbage on entry.
    ``single``: one piece only (a block, or a large tensor that could not be
    split): ops with ``out=`` then cost one call, so ``outs(k)`` hands out the
    buffers. Chunks of many small pieces have buffer 0 only (e.g. where the
    fused Adam kernel writes): their foreach ops with fresh results are cheap.
    ``blocked``: the piece is a block of a tensor split into several.
    """

    index: list[int]
    pieces: tuple[list[Tensor], ...]
    buffers: tuple[list[Tensor], ...]
    single: bool
    blocked: bool = False

    def outs(self, k: int) -> list[Tensor] | None:
        """Buffer k for ``foreach_into`` (None: fresh temporaries)."""
        return self.buffers[k] if self.single else None


def work_chunks(
    owner: Any, tensors: tuple[list[Tensor], ...], buffer_count: int,
    align: Callable[[Tensor], int] | None = None,
) -> Iterator[Chunk]:
    """The tensors of aligned lists (params first, then e.g. grads and moments)
    in chunks, each with ``buffer_count`` work buffers from ``owner``'s one work
    buffer, reused by the next chunk: finish a chunk before taking the next.

    On CPU, tensors that fit a slot (``slot_elements``) are packed together,
    in order, into chunks of up to ``BLOCK_BYTES`` (buffer 0 only); a larger
    one goes a block at a time when all its tensors are contiguous
    (``align(p)``: block lengths a multiple of it, e.g. whole rows), else
    whole, with fresh buffers freed after use. On other devices all
    tensors form one chunk with fresh buffers (a caching allocator makes them
    cheap, and one foreach kernel per op is what is fast there). The packing
    is cached per parameter list on ``owner``.
    """
    params = tensors[0]
    plan = per_param_list(owner, f"_work_plan_{buffer_count}", params,
                          lambda ps: _chunk_plan(ps, buffer_count, align))
    if plan[0] != BLOCK_BYTES or plan[1] != [(p.shape, p.dtype) for p in params]:
        plan = owner.__dict__[f"_work_plan_{buffer_count}"][tuple(map(id, params))] = (
            list(params), _chunk_plan(params, buffer_count, align))
        plan = plan[1]
    for kind, index, extra in plan[2]:
        if kind == "packed":
            yield Chunk(index, tuple([ts[i] for i in index] for ts in tensors),
                        (_packed_views(owner, [params[i] for i in index], extra),), False)
        elif kind == "blocks":
            (i,) = index
            if all(ts[i].is_contiguous() for ts in tensors):
                # one split per tensor (slicing block by block costs a Python call per view)
                parts = [ts[i].view(-1).split(extra) for ts in tensors]
                for j, buffers in enumerate(_block_views(owner, params[i], buffer_count, extra)):
                    yield Chunk(index, tuple([part[j]] for part in parts), buffers, True, True)
                continue
            yield _fresh_chunk(index, tensors, buffer_count, True)
        else:  # "fresh": accelerators (all at once), or a large tensor that cannot be split
            yield _fresh_chunk(index, tensors, buffer_count, len(index) == 1)


def _fresh_chunk(index: list[int], tensors: tuple[list[Tensor], ...], buffer_count: int, single: bool) -> Chunk:
    first = [tensors[0][i] for i in index]
    return Chunk(index, tuple([ts[i] for i in index] for ts in tensors),
                 tuple([torch.empty_like(p, memory_format=torch.preserve_format) for p in first]
                       for _ in range(buffer_count)), single)


def _chunk_plan(params: list[Tensor], buffer_count: int, align: Callable[[Tensor], int] | None):
    """(BLOCK_BYTES, shapes and dtypes, [(kind, indices, extra)]) for ``work_chunks``."""
    chunks: list[tuple[str, list[int], Any]] = []
    accelerated = [i for i, p in enumerate(params) if p.device.type != "cpu"]
    if accelerated:
        chunks.append(("fresh", accelerated, None))
    open_chunks: dict[torch.dtype, tuple[list[int], list[int]]] = {}  # dtype -> (indices, offsets)
    for i, p in enumerate(params):
        if p.device.type != "cpu":
            continue
        width = slot_elements(p, buffer_count)
        if p.numel() > width:
            step = align(p) if align is not None else 1
            if step <= width:
                chunks.append(("blocks", [i], width - width % step))
            else:
                chunks.append(("fresh", [i], None))
            continue
        index, offsets = open_chunks.setdefault(p.dtype, ([], []))
        used = offsets[-1] + params[index[-1]].numel() if index else 0
        if used + p.numel() > slot_elements(p, 1):  # full: close it, open another
            chunks.append(("packed", index, offsets))
            index, offsets = open_chunks[p.dtype] = ([], [])
            used = 0
        index.append(i)
        offsets.append(used)
    chunks += [("packed", index, offsets) for index, offsets in open_chunks.values() if index]
    return BLOCK_BYTES, [(p.shape, p.dtype) for p in params], chunks


def _packed_views(owner: Any, params: list[Tensor], offsets: list[int]) -> list[Tensor]:
    """Buffer 0 of a chunk of packed small tensors: views of the work buffer laid
    out like each tensor (the fused Adam kernel walks raw memory), cached."""
    key = tuple(map(id, params))
    cache = owner.__dict__.setdefault("_packed_views", {})
    hit = cache.get(key)
    buffer = owner.__dict__.get("_work_buffer", {}).get(params[0].device)
    if hit is not None and hit[0] is buffer and hit[1] is offsets:  # the same plan
        return hit[3]
    (slot,) = work_slots(owner, params[0], 1, offsets[-1] + params[-1].numel())
    views = [_laid_out_like(slot, p, offset) for p, offset in zip(params, offsets)]
    if len(cache) > 64:
        cache.clear()
    cache = owner.__dict__.setdefault("_packed_views", {})  # work_slots may have cleared it
    cache[key] = (owner.__dict__["_work_buffer"][params[0].device], offsets, list(params), views)
    return views


def _block_views(owner: Any, p: Tensor, buffer_count: int, block: int) -> list[tuple[list[Tensor], ...]]:
    """The buffers of each block of ``p`` (``block`` elements a block): views of the
    work buffer, cached per size."""
    key = (p.numel(), p.dtype, p.device, buffer_count, block)
    cache = owner.__dict__.setdefault("_block_views", {})
    hit = cache.get(key)
    buffer = owner.__dict__.get("_work_buffer", {}).get(p.device)
    if hit is not None and hit[0] is buffer:
        return hit[1]
    slots = work_slots(owner, p, buffer_count, block)
    lengths = [min(block, p.numel() - start) for start in range(0, p.numel(), block)]
    views = [tuple([slot[:n]] for slot in slots) for n in lengths]
    cache = owner.__dict__.setdefault("_block_views", {})  # work_slots may have cleared it
    cache[key] = (owner.__dict__["_work_buffer"][p.device], views)
    return views


def _laid_out_like(slot: Tensor, p: Tensor, offset: int) -> Tensor:
    space = slot[offset: offset + p.numel()]
    if is_dense(p):  # its elements fill numel slots from its first one on
        return space.as_strided(p.shape, p.stride(), space.storage_offset())
    return space.view(p.shape)


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


def held_bytes(optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """(bytes of the tensors in ``optimizer.state``, bytes of every other tensor the
    optimizer holds: work buffers, caches), the parameters and their gradients
    excluded; a storage counts once however many views reach it. For measuring
    memory held between steps (benchmarks, tests)."""
    own: set[int] = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            own.add(p.untyped_storage().data_ptr())
            if p.grad is not None:
                own.add(p.grad.untyped_storage().data_ptr())
    state = _storages(optimizer.state, set(), {})
    everything = _storages(optimizer.__dict__, set(), {})
    return (sum(n for ptr, n in state.items() if ptr not in own),
            sum(n for ptr, n in everything.items() if ptr not in own and ptr not in state))


def _storages(obj: Any, seen: set[int], out: dict[int, int]) -> dict[int, int]:
    """Bytes of every tensor storage reachable from ``obj`` through dicts, lists,
    tuples, sets and optimizers' attributes, by storage address."""
    if id(obj) in seen:
        return out
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        storage = obj.untyped_storage()
        out[storage.data_ptr()] = max(out.get(storage.data_ptr(), 0), storage.nbytes())
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _storages(key, seen, out)
            _storages(value, seen, out)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:
            _storages(value, seen, out)
    elif isinstance(obj, torch.optim.Optimizer):
        _storages(obj.__dict__, seen, out)
    return out


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


def foreach_into(op: str, outs: list[Tensor | None] | None, *args: Any, **kwargs: Any) -> list[Tensor]:
    """``torch._foreach_<op>(*args, **kwargs)``, written into ``outs[i]`` where it is a tensor.

    The same ATen kernel either way (``torch.<op>(..., out=...)`` per tensor),
    so the numbers are identical; list arguments are indexed, others passed as is.
    ``outs=None``: no buffers at all (the plain foreach call).
    """
    if outs is None or all(o is None for o in outs):
        return list(getattr(torch, f"_foreach_{op}")(*args, **kwargs))
    if len(outs) == 1:  # a chunk's single piece: the common case of blocks
        return [getattr(torch, op)(*[a[0] if isinstance(a, list) else a for a in args], **kwargs, out=outs[0])]
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
# ``adam_direction_into`` falls back to a chain of foreach ops.
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


def single_fusable(p: Tensor, *others: Tensor) -> bool:
    """``fusable_indices`` for one parameter (or block: 1-D, checked quickly)."""
    if p.device.type not in FUSED_ADAM_DEVICES or p.dtype not in FUSED_ADAM_DTYPES:
        return False
    if p.dim() == 1:
        return all(t.stride(0) == 1 for t in others) and p.stride(0) == 1 or p.numel() <= 1
    return is_dense(p) and all(same_layout(t, p) for t in others)


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
    persistent buffers "adam_direction" of ``owner`` (one per parameter: a
    copy of the parameters held for the optimizer's life), valid until the
    next call. For methods that need every u at once (MoMo); the others walk
    ``work_chunks`` with ``adam_direction_into``, which computes the same.
    """
    buffers: list[Tensor] = scratch_buffers(owner, "adam_direction", params, every=True)  # type: ignore[assignment]
    return adam_direction_into(owner, buffers, grads, exp_avgs, exp_avg_sqs, step, beta1, beta2, eps)


def step_tensor(owner: Any, step: int, device: torch.device) -> Tensor:
    """``step`` as the 0-dim float32 tensor the fused Adam kernel reads (the
    already counted step; one serves every tensor), kept on ``owner`` for the
    next chunk of the same step (making one costs more than a small kernel)."""
    cache = owner.__dict__.setdefault("_step_tensors", {})
    hit = cache.get(device)
    if hit is None or hit[0] != step:
        hit = cache[device] = (step, torch.tensor(float(step), dtype=torch.float32, device=device))
    return hit[1]


def adam_direction_into(
    owner: Any, out: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor], step: int, beta1: float, beta2: float, eps: float,
) -> list[Tensor]:
    """Adam's moment updates and direction into given buffers ``out`` (e.g. a
    ``Chunk``'s); returns ``out``.

    In place: m <- lerp(m, g, 1 - beta1), v <- beta2 v + (1 - beta2) g^2;
    out <- u = m_hat / (sqrt(v_hat) + eps) (bias-corrected moments). torch's
    fused Adam kernel does it in one pass: it subtracts lr * u from its
    "parameter", here the zeroed buffer with lr = -1. Unsupported devices,
    dtypes and layouts (see ``fusable_indices``; ``out`` stands for the
    parameters' layout) take the same chain of foreach ops as torch's foreach
    Adam (equal to rounding). ``owner`` caches the layout checks."""
    if len(out) == 1:  # a block or a lone tensor: its views are new each step, do not cache
        fused = [0] if single_fusable(out[0], grads[0], exp_avgs[0], exp_avg_sqs[0]) else []
    else:
        fused = fusable_indices(owner, out, grads, exp_avgs, exp_avg_sqs)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i in fused:
        groups[(out[i].device, out[i].dtype)].append(i)
    for (device, _), idx in groups.items():
        target = out if len(idx) == len(out) else [out[i] for i in idx]
        torch._foreach_zero_(target)
        torch._fused_adam_(
            target, [grads[i] for i in idx], [exp_avgs[i] for i in idx], [exp_avg_sqs[i] for i in idx],
            [], [step_tensor(owner, step, device)] * len(idx), lr=-1.0, beta1=beta1, beta2=beta2,
            weight_decay=0.0, eps=eps, amsgrad=False, maximize=False,
        )
    if len(fused) < len(out):
        fused_set = set(fused)
        rest = [i for i in range(len(out)) if i not in fused_set]
        m, v, g, u = ([ts[i] for i in rest] for ts in (exp_avgs, exp_avg_sqs, grads, out))
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        foreach_into("sqrt", u, v)
        torch._foreach_div_(u, math.sqrt(1 - beta2**step))
        torch._foreach_add_(u, eps)
        foreach_into("div", u, m, u)  # u aliasing an input is fine elementwise
        torch._foreach_div_(u, 1 - beta1**step)
    return out


def adamw_update(
    owner: Any, chunk: Chunk, params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor], step: int, lr: float, beta1: float, beta2: float, eps: float,
    weight_decay: float,
) -> None:
    """p <- p (1 - lr weight_decay) - lr u, u as in ``adam_direction`` (moments updated),
    for pieces of ``chunk``: torch's fused AdamW kernel on the parameters themselves
    where it can (one pass, no buffer; equal to rounding), else u in the chunk's
    buffer 0 and foreach ops."""
    if chunk.single:
        fused = [0] if single_fusable(params[0], grads[0], exp_avgs[0], exp_avg_sqs[0]) else []
    else:
        fused = fusable_indices(owner, params, grads, exp_avgs, exp_avg_sqs)
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i in fused:
        by_device[params[i].device].append(i)
    for device, idx in by_device.items():
        torch._fused_adamw_(
            [params[i] for i in idx], [grads[i] for i in idx], [exp_avgs[i] for i in idx],
            [exp_avg_sqs[i] for i in idx], [], [step_tensor(owner, step, device)] * len(idx), lr=lr,
            beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False,
        )
    if len(fused) < len(params):
        fused_set = set(fused)
        rest = [i for i in range(len(params)) if i not in fused_set]
        p, g, m, v, out = ([ts[i] for i in rest] for ts in (params, grads, exp_avgs, exp_avg_sqs, chunk.buffers[0]))
        direction = adam_direction_into(owner, out, g, m, v, step, beta1, beta2, eps)
        if weight_decay != 0:
            torch._foreach_mul_(p, 1 - lr * weight_decay)
        torch._foreach_add_(p, direction, alpha=-lr)


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
