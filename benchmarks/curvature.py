"""Curvature benchmark: descentlab vs PyHessian, hessian-eigenthings and curvlinops.

Problem (REFERENCES.md 5.4): X ~ N(0, Id) 2,000 x 64, labels argmax(X W + 0.5 eps)
over 10 classes, MLP 64-300-256-10 ReLU (99,126 parameters), mean cross-entropy,
40 full-batch SGD steps (momentum 0.9, lr 0.1); curvature on the full batch in
float32, one thread for torch and BLAS.

Protocol (every comparison side by side in this one process):
  1. Settings at equal accuracy. Each tool's accuracy knob is stepped from loose
     to tight; a setting counts when EVERY one of ``--seeds`` seeds (start vector
     or probes) is within the target: 1e-3 relative error for the top eigenvalue,
     1% for the trace. A rung is abandoned at its first failing seed. PyHessian's
     fixed-budget Hutchinson (``tol=0``) is extended probe block by probe block
     (its probes come from the torch RNG, continued; checked against a direct run),
     and its relative-change stop is replayed on those recorded samples.
  2. Timing, interleaved. At the settings from step 1, ``--rounds`` rounds run
     every tool once each (seed = round, tool order rotated every round); the
     tables give medians of seconds (operator construction included) and of the
     peak resident memory above the level before the call (sampled every 0.5 ms,
     glibc told to return large blocks to the system, so freed tensors leave RSS).
  3. Cost of one Hessian-vector product: each operator in turn, ``--hvp-reps``
     rounds, median and interquartile range.
  4. SLQ at equal steps: PyHessian's ``density`` and descentlab's Lanczos
     (``lanczos_tridiagonal``) from the SAME Rademacher start vector, interleaved;
     accuracy is the distance of each quadrature to a float64 Lanczos with two
     full reorthogonalisation passes on a float64 operator (written here, not the
     library's) from that start vector.
  5. The trace runs on two problems: the one above (ReLU) and the same MLP with tanh
     (trained the same way), where H - G is not zero and ``hessian_trace`` (exact GGN
     trace + estimated residual) has something to estimate; each has its own oracle,
     per-product costs (H, H - G, PyHessian's H, one ``ggn_trace`` call), ladders and
     interleaved rounds. ``--only trace`` runs just this part and splices it into the
     existing report (``--out``), keeping the other sections and stamping the date;
     ``--given-settings`` takes a trace tool's setting from an earlier run's ladder (the
     ladders are deterministic) or skips the tool, and the report's ladder line says so.
Oracles (float64): lambda_1 from ``eigsh(which='LA', tol=1e-10)`` on our operator with
its residual, cross-checked against curvlinops; the exact trace from BackPACK's
``DiagHessian`` (exact for Linear/ReLU/Tanh networks), cross-checked by Hutch++ and by
``hessian_trace`` within their standard errors.

The reference packages are for this benchmark only, installed without their
dependencies (none may touch torch):
  pip install --no-deps --target /tmp/benchpkgs PyHessian==0.1 hessian-eigenthings==1.0.0a5 \
      curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 einops==0.8.2 einconv==0.1.0 \
      opt-einsum==3.4.0 linear-operator==0.6.1 unfoldNd==0.2.3
  PYTHONPATH=/tmp/benchpkgs python benchmarks/curvature.py
A tool that cannot be imported is skipped and reported as such. PyHessian 0.1's
``density`` calls ``torch.eig`` (now a stub that raises); the benchmark supplies it for
that call from ``torch.linalg.eigh`` (its matrix is symmetric tridiagonal).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import importlib
import math
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import eigsh
from torch import nn

from descentlab.curvature import (HessianOperator, ggn_trace, hessian_trace, hutchinson, hutchpp, lanczos_tridiagonal,
                                  top_eigenvalues)
from descentlab.curvature.trace import _ResidualOperator

EIG_TOL = 1e-3
TRACE_TOL = 1e-2
VERSIONS = {"pyhessian": "PyHessian==0.1", "hessian_eigenthings": "hessian-eigenthings==1.0.0a5",
            "curvlinops": "curvlinops-for-pytorch==3.0.1", "backpack": "backpack-for-pytorch==1.7.1"}


# ---------------------------------------------------------------------------------------------
# problem and oracles
# ---------------------------------------------------------------------------------------------
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def make_problem(seed: int = 0, n: int = 2000, dim: int = 64, classes: int = 10, activation: str = "relu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    teacher = torch.randn(dim, classes, generator=g)
    y = (x @ teacher + 0.5 * torch.randn(n, classes, generator=g)).argmax(1)
    torch.manual_seed(seed)
    act = ACTIVATIONS[activation]
    model = nn.Sequential(nn.Linear(dim, 300), act(), nn.Linear(300, 256), act(), nn.Linear(256, classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        out = model(x)
        info = {"loss": float(loss_fn(out, y)), "accuracy": float((out.argmax(1) == y).float().mean()),
                "params": sum(p.numel() for p in model.parameters()), "examples": n, "activation": activation}
    return model, loss_fn, x, y, info


def oracle_top(model, loss_fn, x, y):
    op = HessianOperator(model, loss_fn, x, y, dtype=torch.float64)
    res = top_eigenvalues(op, k=1, tol=1e-10)
    return float(res.eigenvalues[0]), float(res.residuals[0])


def oracle_trace_backpack(model, x, y):
    backpack = importlib.import_module("backpack")
    ext = importlib.import_module("backpack.extensions")
    m = backpack.extend(copy.deepcopy(model).double())
    lf = backpack.extend(nn.CrossEntropyLoss())
    loss = lf(m(x.double()), y)
    with backpack.backpack(ext.DiagHessian()):
        loss.backward()
    return float(sum(p.diag_h.sum() for p in m.parameters()))


# ---------------------------------------------------------------------------------------------
# peak memory: resident set size sampled in a thread
# ---------------------------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def return_freed_memory_to_the_system():
    """glibc keeps freed blocks below its (adaptive) mmap threshold; fix it at 64 KiB so
    every tensor of the problem is its own mapping and RSS follows the live tensors."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak RSS above the level at entry, in MiB (0.5 ms sampling: shorter peaks can be missed)."""

    def __enter__(self):
        gc.collect()
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.mib = (self.peak - self.base) / 2**20


def measured(fn, *args):
    """(result, seconds, peak MiB) of one call."""
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        out = fn(*args)
        sec = time.perf_counter() - t0
    return out, sec, mem.mib


# ---------------------------------------------------------------------------------------------
# tool adapters: fn(problem, setting, seed) -> (estimate, n_hvps)
# ---------------------------------------------------------------------------------------------
def ours_eigsh(problem, tol, seed):
    res = top_eigenvalues(HessianOperator(*problem), k=1, tol=tol, seed=seed)
    return float(res.eigenvalues[0]), res.n_hvps


def ours_lanczos(problem, tol, seed):
    res = top_eigenvalues(HessianOperator(*problem), k=1, tol=tol, seed=seed, method="lanczos")
    return float(res.eigenvalues[0]), res.n_hvps


def ours_hutchpp(problem, m, seed):
    r = hutchpp(HessianOperator(*problem), n_hvps=m, seed=seed)
    return r.estimate, r.n_hvps


def ours_hessian_trace(problem, rtol, seed):
    r = hessian_trace(*problem, rtol=rtol, seed=seed, ggn_chunk_size=256)
    return r.estimate, r.n_hvps


def ours_ggn_trace(problem, chunk_size, seed):
    return ggn_trace(*problem, chunk_size=chunk_size).estimate, 0


def pyh_hessian(model, loss_fn, x, y):
    pyhessian = importlib.import_module("pyhessian")
    work = copy.deepcopy(model)  # PyHessian calls model.eval() and leaves graph-carrying .grad
    return pyhessian.hessian(work, loss_fn, data=(x, y), cuda=False)


class _PyHessianRecorder:
    """Count PyHessian's Hessian-vector products (it does not report them)."""

    def __enter__(self):
        self.module = importlib.import_module("pyhessian.hessian")
        self.original = self.module.hessian_vector_product
        self.count = 0

        def counted(*args, **kwargs):
            self.count += 1
            return self.original(*args, **kwargs)

        self.module.hessian_vector_product = counted
        return self

    def __exit__(self, *exc):
        self.module.hessian_vector_product = self.original


def pyh_power(problem, tol, seed, max_iter=1000):
    torch.manual_seed(seed)
    with _PyHessianRecorder() as rec:
        vals, _ = pyh_hessian(*problem).eigenvalues(maxIter=max_iter, tol=tol)
    return float(vals[0]), rec.count


def pyh_power_fixed(problem, iters, seed):
    """PyHessian's power iteration with exactly ``iters`` products (tol=0 disables its stop)."""
    return pyh_power(problem, 0.0, seed, max_iter=iters)


def pyh_trace_fixed(problem, m, seed):
    """PyHessian's Hutchinson with exactly m samples (tol=0 disables its early stop)."""
    torch.manual_seed(seed)
    samples = pyh_hessian(*problem).trace(maxIter=m, tol=0.0)
    return float(np.mean(samples)), len(samples)


def pyh_trace_replay(samples, tol):
    """PyHessian's trace stop (relative change of the running mean < tol) on recorded samples."""
    trace = 0.0
    for i in range(len(samples)):
        mean = float(np.mean(samples[: i + 1]))
        if abs(mean - trace) / (trace + 1e-6) < tol:
            return mean, i + 1
        trace = mean
    return None


def he_operator(model, loss_fn, x, y):
    he = importlib.import_module("hessian_eigenthings")
    return he.HessianOperator(model, [(x, y)], he.supervised_loss(loss_fn))


def he_lanczos(problem, max_iter, seed):
    he = importlib.import_module("hessian_eigenthings")
    op = he_operator(*problem)
    count = [0]
    inner = op.matvec

    def counted(v):
        count[0] += 1
        return inner(v)

    op.matvec = counted  # instance attribute: the algorithms call operator.matvec
    res = he.lanczos(op, k=1, which="LA", seed=seed, max_iter=max_iter)
    return float(res.eigenvalues[0]), count[0]


def he_hutchpp(problem, m, seed):
    he = importlib.import_module("hessian_eigenthings")
    r = he.hutch_plus_plus(he_operator(*problem), num_matvecs=m, seed=seed)
    return float(r.estimate), m


def cl_operator(model, loss_fn, x, y):
    cl = importlib.import_module("curvlinops")
    return cl.HessianLinearOperator(model, loss_fn, [p for p in model.parameters()], [(x, y)])


def cl_eigsh(problem, tol, seed):
    from descentlab.curvature._linop import CountingOperator

    op = CountingOperator(cl_operator(*problem).to_scipy())
    v0 = np.random.default_rng(seed).standard_normal(op.shape[0]).astype(op.dtype)
    vals, _ = eigsh(op, k=1, which="LA", tol=tol, v0=v0)
    return float(vals.max()), op.count


def cl_hutchpp(problem, m, seed):
    cl = importlib.import_module("curvlinops")
    torch.manual_seed(seed)
    return float(cl.hutchpp_trace(cl_operator(*problem), m)), m


# ---------------------------------------------------------------------------------------------
# step 1: settings at equal accuracy
# ---------------------------------------------------------------------------------------------
@dataclass
class Tool:
    tool: str
    method: str
    fn: object  # fn(problem, setting, seed) -> (estimate, hvps)
    ladder: list
    setting: object = None  # first setting reaching the target on every seed (None: not reached)
    trail: list = field(default_factory=list)  # (setting, seeds passed / tried, worst error, median HVPs)
    seconds: list = field(default_factory=list)
    mib: list = field(default_factory=list)
    hvps: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    note: str = ""

    @property
    def name(self):
        return f"{self.tool} {self.method}"


def ladder_search(t: Tool, problem, exact, target, seeds, results=None):
    """First rung at which every seed is within target; ``results(setting, seed)`` overrides running fn."""
    for s in t.ladder:
        errs, hvps = [], []
        for seed in range(seeds):
            out = results(s, seed) if results is not None else t.fn(problem, s, seed)
            if out is None:  # a replayed stop that did not fire within the recorded samples
                errs.append(math.inf)
                break
            val, n = out
            errs.append(abs(val - exact) / abs(exact))
            hvps.append(n)
            if errs[-1] > target:
                break
        passed = sum(e <= target for e in errs)
        t.trail.append((s, f"{passed}/{len(errs)}", max(errs), statistics.median(hvps) if hvps else math.nan))
        print(f"  {t.name:32s} setting={s!s:8s} seeds ok {passed}/{len(errs)} worst {max(errs):.1e} "
              f"HVPs {hvps}", flush=True)
        if passed == seeds:
            t.setting = s
            return


# ---------------------------------------------------------------------------------------------
# step 2: interleaved timing at those settings
# ---------------------------------------------------------------------------------------------
def interleaved(tools: list[Tool], problem, exact, rounds):
    ready = [t for t in tools if t.setting is not None]
    for r in range(rounds):
        order = ready[r % len(ready):] + ready[: r % len(ready)] if ready else []
        for t in order:
            (val, n), sec, mib = measured(t.fn, problem, t.setting, r)
            t.seconds.append(sec)
            t.mib.append(mib)
            t.hvps.append(n)
            t.errors.append(abs(val - exact) / abs(exact))
        print(f"  round {r}: " + ", ".join(f"{t.name} {t.seconds[-1]:.2f}s" for t in order), flush=True)


def med(xs):
    return statistics.median(xs) if xs else math.nan


# ---------------------------------------------------------------------------------------------
# step 3: one HVP per operator
# ---------------------------------------------------------------------------------------------
def hvp_costs(problem, info, skipped, reps):
    model, loss_fn, x, y = problem
    v32 = np.random.default_rng(0).standard_normal(info["params"]).astype(np.float32)
    vt = torch.from_numpy(v32)
    ops = {}
    ours = HessianOperator(*problem)
    ops["descentlab (kept graph, scipy matvec)"] = lambda: ours.matvec(v32)
    chunked = HessianOperator(*problem, chunk_size=500)
    ops["descentlab (4 chunks of 500, graph rebuilt)"] = lambda: chunked.matvec(v32)
    params, grads, _ = ours._graph()
    leaves = list(params.values())
    V4 = torch.randn(4, info["params"])

    def batched4():  # several vectors per backward pass (torch vmap inside autograd), per vector below
        parts = torch.split(V4, ours.snapshot.numels, dim=1)
        outs = [t.reshape(4, *s) for t, s in zip(parts, ours.snapshot.shapes)]
        return torch.autograd.grad(grads, leaves, grad_outputs=outs, retain_graph=True, is_grads_batched=True)

    ops["descentlab graph, 4 vectors per pass (is_grads_batched), per vector"] = batched4
    if "pyhessian" not in skipped:
        ph = pyh_hessian(*problem)
        hvp = importlib.import_module("pyhessian.utils").hessian_vector_product
        sizes = [p.numel() for p in ph.params]

        def ph_mv():
            return hvp(ph.gradsH, ph.params, [t.view(p.shape) for t, p in zip(torch.split(vt, sizes), ph.params)])

        ops["PyHessian (kept graph)"] = ph_mv
    if "hessian_eigenthings" not in skipped:
        heop = he_operator(*problem)
        ops["hessian-eigenthings"] = lambda: heop.matvec(vt)
    if "curvlinops" not in skipped:
        clop = cl_operator(*problem)
        ops["curvlinops (torch.func jvp of grad)"] = lambda: clop @ vt
    per_vector = {k: (4 if "4 vectors" in k else 1) for k in ops}
    times = {k: [] for k in ops}
    mibs = {k: [] for k in ops}
    for f in ops.values():
        f()  # warm-up (builds kept graphs)
    names = list(ops)
    for r in range(reps):
        for k in names[r % len(names):] + names[: r % len(names)]:
            _, sec, mib = measured(ops[k])
            times[k].append(1e3 * sec / per_vector[k])
            mibs[k].append(mib)
    rows = []
    for k in names:
        q1, q2, q3 = np.percentile(times[k], [25, 50, 75])
        rows.append((k, q2, q1, q3, med(mibs[k])))
        print(f"HVP {k}: {q2:.1f} ms (IQR {q1:.1f}-{q3:.1f}), peak {med(mibs[k]):.1f} MiB", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# step 4: SLQ at equal steps
# ---------------------------------------------------------------------------------------------
def rademacher_like_pyhessian(params, seed):
    """The start vector PyHessian's density draws for this seed (torch RNG), flattened and normalised."""
    torch.manual_seed(seed)
    v = [torch.randint_like(p, high=2) for p in params]
    for vi in v:
        vi[vi == 0] = -1
    flat = torch.cat([t.reshape(-1) for t in v]).double().numpy()
    return flat / np.linalg.norm(flat)


def reference_lanczos(op64, steps, v0):
    """float64 Lanczos, two full Gram-Schmidt passes every step (independent of the library's loop)."""
    V = np.zeros((steps, len(v0)))
    alpha, beta = [], []
    v = v0 / np.linalg.norm(v0)
    for j in range(steps):
        V[j] = v
        w = op64.matvec(v)
        alpha.append(float(v @ w))
        for _ in range(2):
            w = w - V[: j + 1].T @ (V[: j + 1] @ w)
        if j == steps - 1:
            break
        beta.append(float(np.linalg.norm(w)))
        v = w / beta[-1]
    theta, U = eigh_tridiagonal(np.array(alpha), np.array(beta))
    return theta, U[0] ** 2


def quadrature_distance(nodes, weights, ref_nodes, ref_weights):
    """Wasserstein-1 distance between two discrete measures on the line."""
    pts = np.concatenate([nodes, ref_nodes])
    order = np.argsort(pts)
    mass = np.concatenate([weights / weights.sum(), -ref_weights / ref_weights.sum()])[order]
    cdf_gap = np.cumsum(mass)[:-1]
    return float(np.sum(np.abs(cdf_gap) * np.diff(pts[order])))


def slq_compare(problem, seeds, steps, skipped):
    model = problem[0]
    params = [p for p in model.parameters()]
    op64 = HessianOperator(*problem, dtype=torch.float64)
    rows = {"descentlab lanczos_tridiagonal": [], "PyHessian density": []}

    def ours(v0):
        alpha, beta = lanczos_tridiagonal(HessianOperator(*problem), steps, v0)
        theta, U = eigh_tridiagonal(alpha, beta)
        return theta, U[0] ** 2

    def pyh(seed):
        original = getattr(torch, "eig", None)  # a stub that raises in current torch

        def eig(T, eigenvectors=True):  # torch.eig (removed from torch) for PyHessian's symmetric T
            vals, vecs = torch.linalg.eigh(T)
            return torch.stack([vals, torch.zeros_like(vals)], 1), vecs

        torch.eig = eig
        try:
            torch.manual_seed(seed)
            with _PyHessianRecorder() as rec:
                nodes, weights = pyh_hessian(*problem).density(iter=steps, n_v=1)
        finally:
            if original is None:
                del torch.eig
            else:
                torch.eig = original
        assert rec.count == steps, rec.count
        return np.array(nodes[0], dtype=float), np.array(weights[0], dtype=float)

    for seed in range(seeds):
        v0 = rademacher_like_pyhessian(params, seed)
        ref_nodes, ref_weights = reference_lanczos(op64, steps, v0)
        width = ref_nodes.max() - ref_nodes.min()
        calls = [("descentlab lanczos_tridiagonal", ours, v0)]
        if "pyhessian" not in skipped:
            calls.append(("PyHessian density", pyh, seed))
        for name, fn, arg in (calls if seed % 2 == 0 else calls[::-1]):
            (nodes, weights), sec, mib = measured(fn, arg)
            rows[name].append((sec, mib, quadrature_distance(nodes, weights, ref_nodes, ref_weights) / width,
                               abs(nodes.max() - ref_nodes.max()) / ref_nodes.max(),
                               abs(np.sum(nodes * weights) - np.sum(ref_nodes * ref_weights))
                               / abs(np.sum(ref_nodes * ref_weights))))
        print(f"  SLQ seed {seed}: " + ", ".join(f"{k} {v[-1][0]:.2f}s W1/width {v[-1][2]:.1e}"
                                                 for k, v in rows.items() if v), flush=True)
    return {k: v for k, v in rows.items() if v}


def available(module: str) -> str | None:
    try:
        importlib.import_module(module)
        return None
    except Exception as err:  # report why a tool was skipped
        return f"{type(err).__name__}: {err}"

# ---------------------------------------------------------------------------------------------
# trace: both problems (ReLU: the benchmark's; tanh: where H - G is not zero)
# ---------------------------------------------------------------------------------------------
def trace_costs(problem, skipped, reps):
    """ms per product (kept graphs) of H, of the residual H - G, and PyHessian's; ggn_trace's seconds; interleaved."""
    n_params = sum(p.numel() for p in problem[0].parameters())
    v32 = np.random.default_rng(0).standard_normal(n_params).astype(np.float32)
    vt = torch.from_numpy(v32)
    hess, resid = HessianOperator(*problem), _ResidualOperator(*problem)
    ops = {"descentlab H (kept graph)": lambda: hess.matvec_torch(vt),
           "descentlab H - G (kept graph, hessian_trace's product)": lambda: resid.matvec_torch(vt)}
    if "pyhessian" not in skipped:
        ph = pyh_hessian(*problem)
        hvp = importlib.import_module("pyhessian.utils").hessian_vector_product
        sizes = [p.numel() for p in ph.params]
        ops["PyHessian H (kept graph)"] = lambda: hvp(
            ph.gradsH, ph.params, [t.view(p.shape) for t, p in zip(torch.split(vt, sizes), ph.params)])
    ops["descentlab ggn_trace (chunk 256), whole call"] = lambda: ggn_trace(*problem, chunk_size=256)
    for f in ops.values():
        f()  # warm-up (builds kept graphs)
    names, times, mibs = list(ops), {k: [] for k in ops}, {k: [] for k in ops}
    for r in range(reps):
        for k in names[r % len(names):] + names[: r % len(names)]:
            _, sec, mib = measured(ops[k])
            times[k].append(1e3 * sec)
            mibs[k].append(mib)
    rows = []
    for k in names:
        q1, q2, q3 = np.percentile(times[k], [25, 50, 75])
        rows.append((k, q2, q1, q3, med(mibs[k])))
        print(f"  cost {k}: {q2:.1f} ms (IQR {q1:.1f}-{q3:.1f}), peak {med(mibs[k]):.1f} MiB", flush=True)
    return rows


def pyhessian_trace_tools(t, problem, exact, seeds):
    """PyHessian's fixed-budget ladder (runs extended block by block) and its tol stop replayed on the samples."""
    state = {}

    def extend(m, seed):  # the torch RNG continues where the seed's run stopped
        samples, rng = state.get(seed, ([], None))
        if len(samples) < m:
            if rng is None:
                torch.manual_seed(seed)
            else:
                torch.set_rng_state(rng)
            samples = samples + list(pyh_hessian(*problem).trace(maxIter=m - len(samples), tol=0.0))
            state[seed] = (samples, torch.get_rng_state())
        return float(np.mean(samples[:m])), m

    ladder_search(t, problem, exact, TRACE_TOL, seeds, results=extend)
    # the extended run reproduces a direct run (same samples, same mean)
    direct, replayed = pyh_trace_fixed(problem, t.ladder[0], 0)[0], extend(t.ladder[0], 0)[0]
    assert abs(direct - replayed) <= 1e-9 * abs(direct), (direct, replayed)
    tol_tool = Tool("PyHessian", "hutchinson, its tol stop (maxIter 1000)", None, [1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
    recorded = {s: v[0] for s, v in state.items()}
    ladder_search(tol_tool, problem, exact, TRACE_TOL, seeds,
                  results=lambda tol, seed: pyh_trace_replay(recorded[seed], tol) if seed in recorded else None)
    if tol_tool.setting is not None:
        tol_tool.note = "replayed on the fixed-budget samples"
    return tol_tool


@dataclass
class TraceSection:
    info: dict
    checks: dict
    costs: list
    tools: list
    ggn: Tool
    rounds: int
    seeds: int


def trace_benchmark(activation, n, args, skipped, seeds, problem=None):
    """Oracles, per-product costs, ladders (all seeds within 1%) and interleaved timing for one problem."""
    print(f"== trace ({activation})", flush=True)
    if problem is None:
        model, loss_fn, x, y, info = make_problem(n=n, activation=activation)
        problem = (model, loss_fn, x, y)
    else:
        info = dict(make_problem(n=n, activation=activation)[4])
    model, loss_fn, x, y = problem
    checks = {}
    if "backpack" not in skipped:
        exact = oracle_trace_backpack(model, x, y)
        checks["trace (BackPACK DiagHessian, float64)"] = f"{exact:.8g}"
    else:
        r = hutchpp(HessianOperator(model, loss_fn, x, y, dtype=torch.float64), n_hvps=600, seed=123)
        exact = r.estimate
        checks["trace (no BackPACK: Hutch++ 600 HVPs, float64)"] = f"{r.estimate:.8g} +- {r.stderr:.2g}"
    check = hutchpp(HessianOperator(model, loss_fn, x, y, dtype=torch.float64), n_hvps=150, seed=99)
    checks["cross-check: our Hutch++ 150 HVPs, float64"] = (
        f"{check.estimate:.8g} +- {check.stderr:.2g} (z = {(check.estimate - exact) / check.stderr:+.2f})")
    cv = hessian_trace(model, loss_fn, x, y, rtol=1e-3, seed=99, dtype=torch.float64, ggn_chunk_size=256)
    gap = (f"z = {(cv.estimate - exact) / cv.stderr:+.2f}" if cv.stderr > 0
           else f"standard error 0, relative difference {abs(cv.estimate - exact) / abs(exact):.1e}")
    checks["cross-check: hessian_trace rtol 1e-3, float64"] = (
        f"{cv.estimate:.8g} +- {cv.stderr:.2g} ({cv.n_hvps} products; tr G = {cv.parts['ggn']:.8g}, "
        f"tr(H - G) = {cv.estimate - cv.parts['ggn']:.4g}; {gap})")
    for k, v in checks.items():
        print(f"  {k}: {v}", flush=True)
    costs = trace_costs(problem, skipped, 4 if args.quick else 10)
    pp_ladder = [30, 42, 60, 84, 120, 168, 240, 336, 480] if not args.quick else [30, 60, 120, 240, 480]
    tools = [Tool("descentlab", "hessian_trace (GGN control variate)", ours_hessian_trace,
                  [1e-2, 5e-3, 3e-3, 2e-3, 1.5e-3, 1e-3, 7e-4, 5e-4]),
             Tool("descentlab", "hutch++", ours_hutchpp, pp_ladder)]
    if "pyhessian" not in skipped:
        tools.append(Tool("PyHessian", "hutchinson, tol=0 (fixed budget)", pyh_trace_fixed,
                          [50, 70, 100, 140, 200, 280, 400, 560, 800, 1120, 1600] if not args.quick
                          else [50, 100, 200, 400, 800]))
    if args.trace_anchors and "hessian_eigenthings" not in skipped:
        tools.append(Tool("hessian-eigenthings", "hutch++", he_hutchpp, pp_ladder))
    if args.trace_anchors and "curvlinops" not in skipped:
        tools.append(Tool("curvlinops", "hutch++", cl_hutchpp, pp_ladder))
    given = dict(item.split("=") for item in args.given_settings.split(",") if item)
    tol_tool = None
    kept = []
    for t in tools:
        key = f"{activation}.{'pyhessian' if t.tool == 'PyHessian' else t.method.split(' ')[0]}"
        if given.get(key) == "skip":
            print(f"  {t.name}: skipped (--given-settings)", flush=True)
            continue
        kept.append(t)
        if key in given:
            t.setting = type(t.ladder[0])(given[key])
            t.note = "setting given (--given-settings), from an earlier run's ladder"
            print(f"  {t.name}: setting {t.setting} given", flush=True)
        elif t.tool == "PyHessian":
            tol_tool = pyhessian_trace_tools(t, problem, exact, seeds)
        else:
            ladder_search(t, problem, exact, TRACE_TOL, seeds)
    tools = kept
    rounds = 2 if args.quick else args.trace_rounds
    interleaved(tools, problem, exact, rounds)
    ggn = Tool("descentlab", f"exact GGN trace only ({'= tr H: ReLU' if activation == 'relu' else 'not tr H: tanh'})",
               ours_ggn_trace, [256])
    ladder_search(ggn, problem, exact, math.inf, 1)
    interleaved([ggn], problem, exact, 3)
    return TraceSection(info, checks, costs, tools + ([tol_tool] if tol_tool else []), ggn, rounds, seeds)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "curvature.md"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=10, help="seeds that must all reach the accuracy target")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (eigenvalue)")
    parser.add_argument("--trace-rounds", type=int, default=3, help="interleaved timing rounds (trace)")
    parser.add_argument("--hvp-reps", type=int, default=15)
    parser.add_argument("--slq-steps", type=int, default=50)
    parser.add_argument("--trace-anchors", action="store_true",
                        help="also hessian-eigenthings' and curvlinops' Hutch++ (about 4 more minutes)")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check that the script works")
    parser.add_argument("--only", choices=["trace"], default=None,
                        help="run only this section and splice it into the existing --out file (other sections kept)")
    parser.add_argument("--given-settings", default="",
                        help="trace ladders not rerun, e.g. 'relu.hutch++=168,relu.pyhessian=560,tanh.pyhessian=skip': "
                             "the setting an earlier run's ladder found (the ladders are deterministic: same "
                             "problem, same seeds), or skip to leave the tool out; the report says which")
    parser.add_argument("--trace-problems", default="relu,tanh",
                        help="comma-separated activations of the trace problems (relu: the benchmark's problem)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load_at_start = os.getloadavg()  # other jobs on the machine: the ratios are interleaved, the seconds are not
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    blas_limit = threadpool_limits(limits=args.threads, user_api="blas")  # noqa: F841 (kept for the run)
    mallopt = return_freed_memory_to_the_system()

    n = 300 if args.quick else 2000
    model, loss_fn, x, y, info = make_problem(n=n)
    problem = (model, loss_fn, x, y)
    print(f"problem: {info}", flush=True)
    skipped = {m: why for m in ("pyhessian", "hessian_eigenthings", "curvlinops", "backpack")
               if (why := available(m)) is not None}
    for m, why in skipped.items():
        print(f"skipping {m}: {why}", flush=True)
    seeds = 2 if args.quick else args.seeds
    if args.only == "trace":
        sections = []
        for activation in args.trace_problems.split(","):  # the benchmark's problem first, then the smooth one
            sections.append(trace_benchmark(activation, n, args, skipped, seeds))
            args.load = (load_at_start, os.getloadavg())
            splice_trace_sections(args, sections, time.perf_counter() - started)  # after each: partial results kept
        return

    lam, lam_res = oracle_top(model, loss_fn, x, y)
    checks = {"lambda_1 (ours, float64 eigsh tol 1e-10)": f"{lam:.8g} (residual {lam_res:.2e})"}
    if "curvlinops" not in skipped:
        m64 = copy.deepcopy(model).double()
        op64 = importlib.import_module("curvlinops").HessianLinearOperator(m64, loss_fn, list(m64.parameters()),
                                                                           [(x.double(), y)])
        cl_lam = float(eigsh(op64.to_scipy(), k=1, which="LA", tol=1e-10)[0][0])
        checks["lambda_1 (curvlinops, float64 eigsh)"] = f"{cl_lam:.8g} (rel. diff {abs(cl_lam - lam) / lam:.1e})"
    if "backpack" not in skipped:
        exact_trace = oracle_trace_backpack(model, x, y)
        checks["trace (BackPACK DiagHessian, float64)"] = f"{exact_trace:.8g}"
    else:
        r = hutchpp(HessianOperator(model, loss_fn, x, y, dtype=torch.float64), n_hvps=600, seed=123)
        exact_trace = r.estimate
        checks["trace (no BackPACK: Hutch++ 600 HVPs, float64)"] = f"{r.estimate:.8g} +- {r.stderr:.2g}"
    check = hutchpp(HessianOperator(model, loss_fn, x, y, dtype=torch.float64), n_hvps=150, seed=99)
    checks["trace cross-check (our Hutch++ 150 HVPs, float64)"] = (
        f"{check.estimate:.8g} +- {check.stderr:.2g} (z = {(check.estimate - exact_trace) / check.stderr:+.2f})")
    for k, v in checks.items():
        print(f"{k}: {v}", flush=True)

    print("== one HVP", flush=True)
    hvp_rows = hvp_costs(problem, info, skipped, 4 if args.quick else args.hvp_reps)

    print("== top eigenvalue", flush=True)
    eig_tools = [
        Tool("descentlab", "lanczos (early stop)", ours_lanczos,
             [3e-2, 2e-2, 1.5e-2, 1e-2, 7e-3, 5e-3, 3e-3, 2e-3, 1e-3, 1e-4]),
        Tool("descentlab", "eigsh", ours_eigsh, [1e-1, 3e-2, 1e-2, 1e-3, 1e-4]),
    ]
    if "pyhessian" not in skipped:
        eig_tools.append(Tool("PyHessian", "power, its tol stop", pyh_power, [1e-3, 1e-4, 1e-5, 1e-6]))
        # its relative-change stop can fire on a plateau far from lambda_1: the fixed count is the fair anchor
        eig_tools.append(Tool("PyHessian", "power, tol=0 (fixed iterations)", pyh_power_fixed,
                              [100, 140, 200, 280, 400, 560] if not args.quick else [20, 40, 80]))
    if "hessian_eigenthings" not in skipped:
        eig_tools.append(Tool("hessian-eigenthings", "lanczos", he_lanczos, [6, 8, 10, 11, 12, 13, 15, 20, 30]))
    if "curvlinops" not in skipped:
        eig_tools.append(Tool("curvlinops", "+ eigsh", cl_eigsh, [1e-1, 3e-2, 1e-2, 1e-3]))
    for t in eig_tools:
        ladder_search(t, problem, lam, EIG_TOL, seeds)
    interleaved(eig_tools, problem, lam, 2 if args.quick else args.rounds)

    trace_sections = [trace_benchmark(activation, n, args, skipped, seeds, problem if activation == "relu" else None)
                      for activation in args.trace_problems.split(",")]

    print("== SLQ", flush=True)
    slq = slq_compare(problem, 2 if args.quick else args.seeds, 20 if args.quick else args.slq_steps, skipped)

    args.load = (load_at_start, os.getloadavg())
    write_report(args, info, checks, hvp_rows, eig_tools, trace_sections, slq, skipped, mallopt, seeds,
                 time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _f(x, fmt):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def results_table(title, tools, target_text, rounds, seeds):
    reached = [t for t in tools if t.tool == "PyHessian" and t.seconds]
    pyh = min(reached, key=lambda t: med(t.seconds)) if reached else None  # its fastest row at the target
    ours = [t for t in tools if t.tool == "descentlab" and t.seconds]
    best = min(ours, key=lambda t: med(t.seconds)) if ours else None
    out = [f"## {title}", "", target_text, "",
           f"| tool | method | setting (all {seeds} seeds) | HVPs (median) | seconds (median of {rounds}) "
           "| range s | peak MiB | worst error in timing rounds | PyHessian time / this time "
           "| PyHessian HVPs / these |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t in tools:
        if not t.seconds:
            out.append(f"| {t.tool} | {t.method} | {'not reached' if t.setting is None else t.setting} "
                       f"| | | | | | | {t.note} |")
            continue
        ratio = _f(med(pyh.seconds) / med(t.seconds), ".2f") if pyh else "n/a"
        hv = med(t.hvps)
        hv_ratio = _f(med(pyh.hvps) / hv, ".1f") if pyh and hv else "n/a"
        out.append(f"| {t.tool} | {t.method} | {t.setting} | {hv:.0f} | {med(t.seconds):.2f} "
                   f"| {min(t.seconds):.2f}-{max(t.seconds):.2f} | {med(t.mib):.0f} | {max(t.errors):.1e} "
                   f"| {ratio} | {hv_ratio} |")
    out += ["", "Ladders (setting: seeds within target / seeds tried, worst error, median HVPs):", ""]
    for t in tools:
        trail = "; ".join(f"{s}: {ok}, {e:.1e}, {_f(h, '.0f')}" for s, ok, e, h in t.trail) or t.note
        out.append(f"- {t.name}: {trail}")
    if best is not None and pyh is not None:
        out += ["", f"Best descentlab ({best.method}) vs PyHessian: {med(pyh.seconds) / med(best.seconds):.2f}x "
                f"faster (median times); per-round ratios "
                + ", ".join(f"{a / b:.2f}" for a, b in zip(pyh.seconds, best.seconds)) + "."]
    return out + [""]



TRACE_HEADING = "## Trace within 1% of the exact value"


def trace_section_lines(sections):
    lines = [TRACE_HEADING, "",
             "Two problems, the same MLP trained the same way: with ReLU (the benchmark's problem, on which the "
             "8x target is judged) and with tanh. `hessian_trace` computes tr G exactly (`ggn_trace`) and "
             "estimates only tr(H - G), per module; for ReLU every diagonal block of H - G is zero, so its "
             "probes only confirm that (the favourable case). For tanh tr(H - G) is not zero and must be "
             "estimated. Its setting is `rtol` (two-stage plan: 4 pilot probes per module, then fresh probes "
             "for a standard error of rtol * |estimate|); its HVPs are residual products (one double backward "
             "each, cost below) and exclude `ggn_trace`'s backward passes, which its seconds include.", ""]
    for sec in sections:
        info = sec.info
        lines += [f"### {info['activation'].upper()} MLP 64-300-256-10: {info['params']:,} parameters, "
                  f"{info['examples']} examples, train loss {info['loss']:.3f}, accuracy {info['accuracy']:.3f}", ""]
        lines += [f"- {k}: {v}" for k, v in sec.checks.items()] + [""]
        lines += ["Cost per product (median of 10, interleaved) and of one `ggn_trace` call:", "",
                  "| operation | ms | IQR ms | peak MiB |", "|---|---|---|---|"]
        lines += [f"| {k} | {q2:.1f} | {q1:.1f}-{q3:.1f} | {mib:.1f} |" for k, q2, q1, q3, mib in sec.costs] + [""]
        lines += results_table(f"Trace within 1%, {info['activation']}", sec.tools,
                               "Settings: `hessian_trace` rtol, number of HVPs, or PyHessian's relative-change tol "
                               "(replayed on the recorded fixed-budget samples; not timed).",
                               sec.rounds, sec.seeds)[2:]  # the title is the subsection's
        g = sec.ggn
        if g.seconds:
            lines += [f"Deterministic, listed apart: `ggn_trace` alone (chunk 256) is {med(g.errors):.1e} from the "
                      f"exact trace in {med(g.seconds):.2f} s (median of 3), {med(g.mib):.0f} MiB"
                      + ("; it equals tr H only because this MLP is piecewise linear in each layer (ReLU)."
                         if info["activation"] == "relu" else "; for tanh it is not tr H."), ""]
    return lines


def splice_trace_sections(args, sections, wall):
    """Replace the trace section of the existing report (other sections and the notes are kept)."""
    path = Path(args.out)
    text = path.read_text()
    start = text.index(TRACE_HEADING)
    end = text.index("## Spectral density", start)
    stamp = (f"Trace section regenerated by `benchmarks/curvature.py --only trace` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {wall / 60:.1f} min "
             f"({'QUICK RUN (n=300)' if args.quick else 'full problems'}, problems done: "
             f"{', '.join(sec.info['activation'] for sec in sections)}); "
             f"load average (1, 5, 15 min) {'/'.join(f'{v:.1f}' for v in args.load[0])} at the start, "
             f"{'/'.join(f'{v:.1f}' for v in args.load[1])} at the end, on {os.cpu_count()} cores. The other "
             "sections are from the run dated above.")
    head = text[:start]
    marker = "Trace section regenerated by"
    if marker in head:  # replace an earlier stamp
        a = head.index(marker)
        b = head.index("\n\n", a)
        head = head[:a] + stamp + head[b:]
    else:
        first_para_end = head.index("\n\n", head.index("Generated by"))
        head = head[:first_para_end] + "\n\n" + stamp + head[first_para_end:]
    path.write_text(head + "\n".join(trace_section_lines(sections)) + "\n" + text[end:])
    print(f"wrote {path} (trace section)", flush=True)


def write_report(args, info, checks, hvp_rows, eig_tools, trace_sections, slq, skipped, mallopt, seeds, wall):
    slq_steps = 20 if args.quick else args.slq_steps
    lines = ["# Curvature benchmark", "",
             f"Generated by `benchmarks/curvature.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             f"in {wall / 60:.1f} min; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{args.threads} thread(s) for torch and BLAS, float32, "
             f"{'QUICK RUN (n=300)' if args.quick else 'full problem'}; load average (1, 5, 15 min) "
             f"{'/'.join(f'{v:.1f}' for v in args.load[0])} at the start, "
             f"{'/'.join(f'{v:.1f}' for v in args.load[1])} at the end, on {os.cpu_count()} cores.", "",
             f"Problem: MLP 64-300-256-10 ReLU, {info['params']:,} parameters, {info['examples']} "
             f"examples, train loss {info['loss']:.3f}, accuracy {info['accuracy']:.3f} after 40 SGD steps "
             "(REFERENCES.md 5.4).", "",
             "Versions: " + ", ".join(f"`{v}`" for k, v in VERSIONS.items() if k not in skipped) + ".", "",
             "Protocol: see the script's docstring. In short: a setting counts only when all "
             f"{seeds} seeds reach the target; the settings found are then timed side by side, "
             "interleaved (tool order rotated each round), medians. Memory: peak RSS above the level "
             "before the call" + ("" if mallopt else " (mallopt unavailable: freed memory may stay resident)")
             + ".", ""]
    if skipped:
        lines += ["Skipped: " + "; ".join(f"{k} ({why})" for k, why in skipped.items()), ""]
    lines += ["## Oracles", ""] + [f"- {k}: {v}" for k, v in checks.items()] + [""]
    lines += [f"## Cost of one Hessian-vector product (median of {args.hvp_reps}, interleaved)", "",
              "| operator | ms | IQR ms | peak MiB |", "|---|---|---|---|"]
    lines += [f"| {k} | {q2:.1f} | {q1:.1f}-{q3:.1f} | {mib:.1f} |" for k, q2, q1, q3, mib in hvp_rows] + [""]

    lines += results_table("Top eigenvalue within 1e-3 relative error", eig_tools,
                   "Settings: descentlab/curvlinops `eigsh` tol, descentlab Lanczos residual tol, PyHessian "
                   "power-iteration tol (relative change, maxIter 1000) or its iteration count with tol=0, "
                   "hessian-eigenthings Lanczos `max_iter` (which='LA'). HVPs include any residual check. "
                   "'PyHessian time / this time' uses the fastest PyHessian row that reached the target.",
                   args.rounds, seeds)
    lines += trace_section_lines(trace_sections)
    lines += [f"## Spectral density (SLQ), {slq_steps} Lanczos steps, same start vector, {seeds} seeds", "",
              "Accuracy against a float64 Lanczos with two full reorthogonalisation passes from the same "
              "start vector: W1 = Wasserstein-1 distance between the quadrature measures / spectral width; "
              "lambda_max = relative error of the largest node; mean = relative error of sum(w theta).", "",
              "| tool | seconds (median) | range s | peak MiB | W1/width (worst) | lambda_max err (worst) "
              "| mean err (worst) | PyHessian time / this time |", "|---|---|---|---|---|---|---|---|"]
    pyh_slq = slq.get("PyHessian density")
    for name, rows in slq.items():
        secs = [r[0] for r in rows]
        ratio = (f"{med([r[0] for r in pyh_slq]) / med(secs):.2f}" if pyh_slq else "n/a")
        lines.append(f"| {name} | {med(secs):.2f} | {min(secs):.2f}-{max(secs):.2f} | {med([r[1] for r in rows]):.0f} "
                     f"| {max(r[2] for r in rows):.1e} | {max(r[3] for r in rows):.1e} | {max(r[4] for r in rows):.1e} "
                     f"| {ratio} |")
    lines.append("")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
