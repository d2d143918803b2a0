"""Curvature benchmark: descentlab vs PyHessian, hessian-eigenthings and curvlinops.

Problem (REFERENCES.md 5.4): X ~ N(0, Id) 2,000 x 64, labels argmax(X W + 0.5 eps)
over 10 classes, MLP 64-300-256-10 ReLU (99,126 parameters), mean cross-entropy,
40 full-batch SGD steps (momentum 0.9, lr 0.1); curvature on the full batch in
float32, one thread.

Measured per tool:
  * time to the top Hessian eigenvalue within 1e-3 relative error: each tool's
    accuracy knob is stepped from loose to tight and the first setting that
    reaches 1e-3 is timed (median of repeats, operator construction included);
  * time to a trace within 1% of the exact value: probe budgets are stepped up
    and the first budget at which every one of ``--seeds`` seeds is within 1% is
    timed (mean over the seeds);
  * the relative error each tool reaches with its own defaults.
Oracles (float64): lambda_1 from ``eigsh(which='LA', tol=1e-10)`` on our operator with
its residual, cross-checked against curvlinops; the exact trace from BackPACK's
``DiagHessian``, cross-checked by Hutch++ within its standard error.

The reference packages are for this benchmark only, installed without their
dependencies (none may touch torch):
  pip install --no-deps --target /tmp/benchpkgs PyHessian==0.1 hessian-eigenthings==1.0.0a5 \
      curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 einops==0.8.2 einconv==0.1.0 \
      opt-einsum==3.4.0 linear-operator==0.6.1 unfoldNd==0.2.3
  PYTHONPATH=/tmp/benchpkgs python benchmarks/curvature.py
A tool that cannot be imported is skipped and reported as such.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from torch import nn

from descentlab.curvature import HessianOperator, ggn_trace, hutchinson, hutchpp, power_iteration, top_eigenvalues

EIG_TOL = 1e-3
TRACE_TOL = 1e-2
VERSIONS = {"pyhessian": "PyHessian==0.1", "hessian_eigenthings": "hessian-eigenthings==1.0.0a5",
            "curvlinops": "curvlinops-for-pytorch==3.0.1", "backpack": "backpack-for-pytorch==1.7.1"}


# ---------------------------------------------------------------------------------------------
# problem and oracles
# ---------------------------------------------------------------------------------------------
def make_problem(seed: int = 0, n: int = 2000, dim: int = 64, classes: int = 10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    teacher = torch.randn(dim, classes, generator=g)
    y = (x @ teacher + 0.5 * torch.randn(n, classes, generator=g)).argmax(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(dim, 300), nn.ReLU(), nn.Linear(300, 256), nn.ReLU(), nn.Linear(256, classes))
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
                "params": sum(p.numel() for p in model.parameters()), "examples": n}
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
# tool adapters: each returns (estimate, n_hvps or None)
# ---------------------------------------------------------------------------------------------
def ours_lanczos(model, loss_fn, x, y, tol, seed=0):
    res = top_eigenvalues(HessianOperator(model, loss_fn, x, y), k=1, tol=tol, seed=seed)
    return float(res.eigenvalues[0]), res.n_hvps


def ours_lanczos_early(model, loss_fn, x, y, tol, seed=0):
    res = top_eigenvalues(HessianOperator(model, loss_fn, x, y), k=1, tol=tol, seed=seed, method="lanczos")
    return float(res.eigenvalues[0]), res.n_hvps


def ours_ggn_trace(model, loss_fn, x, y, chunk_size, seed):
    return ggn_trace(model, loss_fn, x, y, chunk_size=chunk_size).estimate, 0


def ours_power(model, loss_fn, x, y, tol, seed=0):
    res = power_iteration(HessianOperator(model, loss_fn, x, y), tol=tol, maxiter=2000, seed=seed)
    return float(res.eigenvalues[0]), res.n_hvps


def ours_hutchinson(model, loss_fn, x, y, m, seed):
    r = hutchinson(HessianOperator(model, loss_fn, x, y), n_probes=m, seed=seed)
    return r.estimate, r.n_hvps


def ours_hutchpp(model, loss_fn, x, y, m, seed):
    r = hutchpp(HessianOperator(model, loss_fn, x, y), n_hvps=m, seed=seed)
    return r.estimate, r.n_hvps


def pyh_hessian(model, loss_fn, x, y):
    pyhessian = importlib.import_module("pyhessian")
    work = copy.deepcopy(model)  # PyHessian calls model.eval() and leaves graph-carrying .grad
    return pyhessian.hessian(work, loss_fn, data=(x, y), cuda=False)


class _PyHessianCounter:
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


def pyh_top(model, loss_fn, x, y, tol, seed=0, max_iter=1000):
    torch.manual_seed(seed)
    with _PyHessianCounter() as counter:
        vals, _ = pyh_hessian(model, loss_fn, x, y).eigenvalues(maxIter=max_iter, tol=tol)
    return float(vals[0]), counter.count


def pyh_trace(model, loss_fn, x, y, tol, seed, max_iter=1000):
    torch.manual_seed(seed)
    samples = pyh_hessian(model, loss_fn, x, y).trace(maxIter=max_iter, tol=tol)
    return float(np.mean(samples)), len(samples)


def pyh_trace_fixed(model, loss_fn, x, y, m, seed):
    """PyHessian's Hutchinson with exactly m samples (tol=0 disables its early stop)."""
    torch.manual_seed(seed)
    samples = pyh_hessian(model, loss_fn, x, y).trace(maxIter=m, tol=0.0)
    return float(np.mean(samples)), len(samples)


def he_operator(model, loss_fn, x, y):
    he = importlib.import_module("hessian_eigenthings")
    return he.HessianOperator(model, [(x, y)], he.supervised_loss(loss_fn))


def he_lanczos(model, loss_fn, x, y, max_iter, seed=0, which="LA"):
    he = importlib.import_module("hessian_eigenthings")
    kw = {} if max_iter is None else {"max_iter": max_iter}
    op = he_operator(model, loss_fn, x, y)
    count = [0]
    inner = op.matvec

    def counted(v):
        count[0] += 1
        return inner(v)

    op.matvec = counted  # instance attribute: the algorithms call operator.matvec
    res = he.lanczos(op, k=1, which=which, seed=seed, **kw)
    return float(res.eigenvalues[0]), count[0]


def he_trace(model, loss_fn, x, y, m, seed, method):
    he = importlib.import_module("hessian_eigenthings")
    op = he_operator(model, loss_fn, x, y)
    if method == "hutchinson":
        r = he.hutchinson(op, num_samples=m, seed=seed)
    else:
        r = he.hutch_plus_plus(op, num_matvecs=m, seed=seed)
    return float(r.estimate), m


def cl_operator(model, loss_fn, x, y):
    cl = importlib.import_module("curvlinops")
    return cl.HessianLinearOperator(model, loss_fn, [p for p in model.parameters()], [(x, y)])


def cl_top(model, loss_fn, x, y, tol, seed=0, which="LA"):
    from descentlab.curvature._linop import CountingOperator

    op = CountingOperator(cl_operator(model, loss_fn, x, y).to_scipy())
    v0 = np.random.default_rng(seed).standard_normal(op.shape[0]).astype(op.dtype)
    vals, _ = eigsh(op, k=1, which=which, tol=tol, v0=v0)
    return float(vals.max()), op.count


def cl_trace(model, loss_fn, x, y, m, seed, method):
    cl = importlib.import_module("curvlinops")
    op = cl_operator(model, loss_fn, x, y)
    torch.manual_seed(seed)
    fn = cl.hutchinson_trace if method == "hutchinson" else cl.hutchpp_trace
    return float(fn(op, m)), m


# ---------------------------------------------------------------------------------------------
# ladders
# ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    tool: str
    method: str
    setting: str = "not reached"
    seconds: float = math.nan
    hvps: float = math.nan
    error: float = math.nan  # relative error at the timed setting
    trail: list = field(default_factory=list)  # (setting, rel error, seconds, HVPs)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def eig_ladder(tool, method, fn, settings, problem, exact, repeats):
    out = Outcome(tool, method)
    for s in settings:
        (val, hvps), sec = timed(fn, *problem, s)
        err = abs(val - exact) / abs(exact)
        out.trail.append((s, err, sec, hvps))
        print(f"  {tool:20s} {method:12s} setting={s!s:8s} rel.err={err:.2e} {sec:7.2f}s hvps={hvps}", flush=True)
        if err <= EIG_TOL:
            times = [sec] + [timed(fn, *problem, s)[1] for _ in range(repeats - 1)]
            out.setting, out.seconds, out.error = str(s), statistics.median(times), err
            out.hvps = hvps if hvps is not None else math.nan
            break
    return out


def trace_ladder(tool, method, fn, settings, problem, exact, seeds):
    out = Outcome(tool, method)
    for s in settings:
        errs, secs, hvps = [], [], []
        for seed in range(seeds):
            (val, n), sec = timed(fn, *problem, s, seed)
            errs.append(abs(val - exact) / abs(exact))
            secs.append(sec)
            hvps.append(n)
            if errs[-1] > TRACE_TOL:
                break
        worst = max(errs)
        out.trail.append((s, worst, float(np.mean(secs)), hvps[0]))
        print(f"  {tool:20s} {method:12s} setting={s!s:8s} worst rel.err={worst:.2e} "
              f"mean {np.mean(secs):7.2f}s hvps={hvps}", flush=True)
        if worst <= TRACE_TOL and len(errs) == seeds:
            out.setting, out.seconds, out.error = str(s), float(np.mean(secs)), worst
            out.hvps = float(np.mean(hvps)) if None not in hvps else math.nan
            break
    return out


def available(module: str) -> str | None:
    try:
        importlib.import_module(module)
        return None
    except Exception as err:  # report why a tool was skipped
        return f"{type(err).__name__}: {err}"


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "curvature.md"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per trace budget")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats at the winning eigenvalue setting")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check that the script works")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # "n threads" for every tool: numpy/scipy BLAS too (ARPACK inside eigsh runs on it)
    from threadpoolctl import threadpool_limits

    blas_limit = threadpool_limits(limits=args.threads, user_api="blas")  # noqa: F841 (kept for the run)

    n = 300 if args.quick else 2000
    model, loss_fn, x, y, info = make_problem(n=n)
    problem = (model, loss_fn, x, y)
    print(f"problem: {info}", flush=True)

    skipped = {m: why for m in ("pyhessian", "hessian_eigenthings", "curvlinops", "backpack")
               if (why := available(m)) is not None}
    for m, why in skipped.items():
        print(f"skipping {m}: {why}", flush=True)

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
    check = hutchpp(HessianOperator(model, loss_fn, x, y, dtype=torch.float64), n_hvps=300, seed=99)
    checks["trace cross-check (our Hutch++ 300 HVPs, float64)"] = (
        f"{check.estimate:.8g} +- {check.stderr:.2g} (z = {(check.estimate - exact_trace) / check.stderr:+.2f})")
    for k, v in checks.items():
        print(f"{k}: {v}", flush=True)

    # per-HVP cost of each operator (float32), median of 10 products
    hvp_ms = {}
    v = torch.randn(info["params"])

    def per_hvp(name, matvec):
        matvec(v)
        ts = [timed(matvec, v)[1] for _ in range(10)]
        hvp_ms[name] = 1e3 * statistics.median(ts)

    ours = HessianOperator(model, loss_fn, x, y)
    per_hvp("descentlab (graph reuse)", ours.matvec_torch)
    per_hvp("descentlab (chunk 500, no reuse)", HessianOperator(model, loss_fn, x, y, chunk_size=500).matvec_torch)
    if "pyhessian" not in skipped:
        ph = pyh_hessian(*problem)
        from pyhessian.utils import hessian_vector_product  # noqa: E402  (benchmark-only package)

        def ph_mv(vec):
            parts = list(torch.split(vec, [p.numel() for p in ph.params]))
            return hessian_vector_product(ph.gradsH, ph.params, [t.view(p.shape) for t, p in zip(parts, ph.params)])

        per_hvp("PyHessian (graph reuse)", ph_mv)
    if "hessian_eigenthings" not in skipped:
        per_hvp("hessian-eigenthings", he_operator(*problem).matvec)
    if "curvlinops" not in skipped:
        clop = cl_operator(*problem)
        per_hvp("curvlinops (torch.func jvp of grad)", lambda vec: clop @ vec)
    for k, ms in hvp_ms.items():
        print(f"HVP {k}: {ms:.1f} ms", flush=True)

    tols = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    eig_results = [
        eig_ladder("descentlab", "eigsh", ours_lanczos, tols, problem, lam, args.repeats),
        eig_ladder("descentlab", "lanczos", ours_lanczos_early, [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4],
                   problem, lam, args.repeats),
        eig_ladder("descentlab", "power", ours_power, [1e-1, 3e-2, 1e-2, 3e-3, 1e-3], problem, lam, args.repeats),
    ]
    if "pyhessian" not in skipped:
        eig_results.append(eig_ladder("PyHessian", "power", pyh_top, [1e-3, 1e-4, 1e-5, 1e-6, 1e-7],
                                      problem, lam, args.repeats))
    if "hessian_eigenthings" not in skipped:
        eig_results.append(eig_ladder("hessian-eigenthings", "lanczos", he_lanczos, [2, 5, 10, 15, 20, 30, 40, 50],
                                      problem, lam, args.repeats))
    if "curvlinops" not in skipped:
        eig_results.append(eig_ladder("curvlinops", "eigsh", cl_top, tols, problem, lam, args.repeats))

    budgets = [10, 20, 40, 80, 160, 320, 640] if not args.quick else [10, 40]
    pp_budgets = [12, 21, 42, 81, 162, 321, 642] if not args.quick else [12, 42]
    trace_results = [
        # deterministic: one seed suffices; equals tr H for this ReLU MLP (see trace_exact.py)
        trace_ladder("descentlab", "exact GGN", ours_ggn_trace, [256], problem, exact_trace, 1),
        trace_ladder("descentlab", "hutchinson", ours_hutchinson, budgets, problem, exact_trace, args.seeds),
        trace_ladder("descentlab", "hutch++", ours_hutchpp, pp_budgets, problem, exact_trace, args.seeds),
    ]
    if "pyhessian" not in skipped:
        trace_results.append(trace_ladder("PyHessian", "hutchinson", pyh_trace, [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5],
                                          problem, exact_trace, args.seeds))
        trace_results.append(trace_ladder("PyHessian", "hutchinson, tol=0", pyh_trace_fixed, budgets,
                                          problem, exact_trace, args.seeds))
    if "hessian_eigenthings" not in skipped:
        for method, ladder in (("hutchinson", budgets), ("hutch++", pp_budgets)):
            trace_results.append(trace_ladder("hessian-eigenthings", method,
                                              lambda *a, _m=method: he_trace(*a, method=_m), ladder,
                                              problem, exact_trace, args.seeds))
    if "curvlinops" not in skipped:
        for method, ladder in (("hutchinson", budgets), ("hutch++", pp_budgets)):
            trace_results.append(trace_ladder("curvlinops", method, lambda *a, _m=method: cl_trace(*a, method=_m),
                                              ladder, problem, exact_trace, args.seeds))

    # accuracy with each tool's own defaults
    defaults = []

    def default_row(tool, what, call):
        try:
            (val, _), sec = timed(call)
            exact = lam if what == "top eigenvalue" else exact_trace
            defaults.append((tool, what, val, abs(val - exact) / abs(exact), sec))
        except Exception as err:  # a default that raises is a finding too
            defaults.append((tool, what, f"{type(err).__name__}: {err}", math.nan, math.nan))

    default_row("descentlab top_eigenvalues()", "top eigenvalue",
                lambda: (float(top_eigenvalues(HessianOperator(*problem)).eigenvalues[0]), None))
    default_row("descentlab top_eigenvalues(method='lanczos')", "top eigenvalue",
                lambda: (float(top_eigenvalues(HessianOperator(*problem), method="lanczos").eigenvalues[0]), None))
    default_row("descentlab ggn_trace()", "trace", lambda: (ggn_trace(*problem).estimate, None))
    default_row("descentlab hutchpp()", "trace", lambda: (hutchpp(HessianOperator(*problem)).estimate, None))
    default_row("descentlab hutchinson()", "trace", lambda: (hutchinson(HessianOperator(*problem)).estimate, None))
    if "pyhessian" not in skipped:
        default_row("PyHessian eigenvalues()", "top eigenvalue",
                    lambda: (float(pyh_hessian(*problem).eigenvalues()[0][0]), None))
        default_row("PyHessian trace()", "trace", lambda: (float(np.mean(pyh_hessian(*problem).trace())), None))
    if "hessian_eigenthings" not in skipped:
        he = importlib.import_module("hessian_eigenthings")
        default_row("hessian-eigenthings lanczos(k=1)", "top eigenvalue",
                    lambda: (float(he.lanczos(he_operator(*problem), k=1).eigenvalues[0]), None))
        default_row("hessian-eigenthings trace()", "trace",
                    lambda: (float(he.trace(he_operator(*problem)).estimate), None))
    if "curvlinops" not in skipped:
        default_row("curvlinops + eigsh(k=1)", "top eigenvalue",
                    lambda: (float(eigsh(cl_operator(*problem).to_scipy(), k=1)[0][0]), None))

    write_report(args, info, checks, hvp_ms, eig_results, trace_results, defaults, skipped)


def _ratio(num: Outcome | None, den: Outcome | None) -> str:
    if num is None or den is None or math.isnan(num.seconds) or math.isnan(den.seconds):
        return "n/a"
    return f"{num.seconds / den.seconds:.2f}"


def write_report(args, info, checks, hvp_ms, eig_results, trace_results, defaults, skipped):
    def best(results, tool, exclude=()):
        pool = [o for o in results if o.tool == tool and o.method not in exclude and not math.isnan(o.seconds)]
        return min(pool, key=lambda o: o.seconds) if pool else None

    best_eig = best(eig_results, "descentlab")
    best_trace = best(trace_results, "descentlab", exclude=("exact GGN",))
    lines = ["# Curvature benchmark", "",
             f"Generated by `benchmarks/curvature.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{args.threads} thread(s) for torch and BLAS, float32, {'QUICK RUN (n=300)' if args.quick else 'full problem'}.", "",
             f"Problem: MLP 64-300-256-10 ReLU, {info['params']:,} parameters, {info['examples']} "
             f"examples, train loss {info['loss']:.3f}, accuracy {info['accuracy']:.3f} after 40 SGD steps "
             "(REFERENCES.md 5.4).", "",
             "Versions: " + ", ".join(f"`{v}`" for k, v in VERSIONS.items() if k not in skipped) + ".", ""]
    if skipped:
        lines += ["Skipped: " + "; ".join(f"{k} ({why})" for k, why in skipped.items()), ""]
    lines += ["## Oracles", ""] + [f"- {k}: {v}" for k, v in checks.items()] + [""]
    lines += ["## Cost of one Hessian-vector product (median of 10)", "", "| operator | ms |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in hvp_ms.items()] + [""]

    def table(title, results, ref, criterion):
        pyh = best(results, "PyHessian")
        out = [f"## {title}", "", criterion, "",
               "| tool | method | first setting reaching it | HVPs | seconds | time / descentlab best "
               "| PyHessian time / this time | PyHessian HVPs / these HVPs |",
               "|---|---|---|---|---|---|---|---|"]
        for o in results:
            hv = "" if math.isnan(o.hvps) else f"{o.hvps:.0f}"
            sec = "" if math.isnan(o.seconds) else f"{o.seconds:.2f}"
            hv_ratio = (f"{pyh.hvps / o.hvps:.1f}" if pyh is not None and o.hvps > 0
                        and not math.isnan(pyh.hvps) and not math.isnan(o.hvps) else "n/a")
            out.append(f"| {o.tool} | {o.method} | {o.setting} | {hv} | {sec} | {_ratio(o, ref)} "
                       f"| {_ratio(pyh, o)} | {hv_ratio} |")
        out += ["", "Ladder (setting: relative error (worst seed for traces), seconds, HVPs):", ""]
        for o in results:
            trail = "; ".join(f"{s}: {e:.1e}, {t:.2f}s, {h}" for s, e, t, h in o.trail)
            out.append(f"- {o.tool} {o.method}: {trail}")
        return out + [""]

    lines += table("Top eigenvalue within 1e-3 relative error", eig_results, best_eig,
                   "Settings: descentlab/curvlinops `eigsh` tol, descentlab power-iteration residual tol, "
                   "PyHessian power-iteration tol (relative change, maxIter 1000), hessian-eigenthings "
                   "Lanczos `max_iter` (which='LA'). Seconds: median of repeats at that setting, operator "
                   "construction included. HVPs for descentlab include the residual check.")
    lines += table("Trace within 1% of the exact value", trace_results, best_trace,
                   f"A budget counts when all {args.seeds} seeds are within 1% (seconds: mean over seeds). "
                   "Settings: number of HVPs, or PyHessian's relative-change tol (maxIter 1000); "
                   "'hutchinson, tol=0' is PyHessian with its early stop disabled and maxIter as the budget. "
                   "'descentlab best' is the best stochastic estimator; 'exact GGN' (`ggn_trace`, "
                   "chunk size as setting) is deterministic and equals tr H only because this MLP is "
                   "piecewise linear in each weight matrix (ReLU), so it is listed apart.")
    lines += ["## Accuracy with each tool's defaults", "", "| call | quantity | value | relative error | seconds |",
              "|---|---|---|---|---|"]
    for tool, what, val, err, sec in defaults:
        vs = f"{val:.6g}" if isinstance(val, float) else str(val)
        es = "" if isinstance(err, float) and math.isnan(err) else f"{err:.2e}"
        ss = "" if isinstance(sec, float) and math.isnan(sec) else f"{sec:.2f}"
        lines.append(f"| {tool} | {what} | {vs} | {es} | {ss} |")
    lines.append("")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
