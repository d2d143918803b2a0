"""Training throughput of descentlab's GPT against nanoGPT's ``model.py``.

Tokens per second of one training step (forward, cross-entropy over every
token, backward, ``torch.optim.AdamW`` step) at the same configuration (no
biases, no dropout, learned positions, tied embeddings), at two sizes, on the
character vocabulary of the Shakespeare corpus. Both models run in this
process, their repeats interleaved (ours, nanoGPT, nanoGPT, ours, ...) so
machine load hits both alike; medians are reported. Before timing, nanoGPT's
model is loaded with our weights and must give the same loss (same function,
so the same work). Memory: peak resident memory of a child process that
builds one model and takes a few steps, minus the same child's before the
model (the CPU has no allocator statistics).

nanoGPT's code is never committed. ``--nanogpt PATH`` reads its ``model.py``
from a path (e.g. a clone of github.com/karpathy/nanoGPT); without it the
benchmark's scratch folder gets a re-creation of its published architecture
(GPT-2 blocks as nanoGPT lays them out: a LayerNorm of its own with optional
bias, one q/k/v projection split into three, ``scaled_dot_product_attention``
with ``is_causal``, GELU MLP, dropout layers, positions by embedding lookup,
the head over every position, loss inside ``forward``), written here from
that description, not copied.

    python benchmarks/gpt_throughput.py [--nanogpt path/to/model.py] [--repeats 9] [--threads 1]

Writes benchmarks/results/gpt_throughput.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from descentlab.losses import build_loss
from descentlab.losses.sequence import PerTokenLoss
from descentlab.models import build_model

OUT = Path(__file__).resolve().parent / "results" / "gpt_throughput.md"
VOCAB = 77  # the Shakespeare corpus's characters

SIZES = {
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=32),
    "medium": dict(n_layer=6, n_head=6, n_embd=192, block_size=128, batch=16),
}

RECREATION = '''"""nanoGPT's GPT re-created from its published architecture (benchmark scratch; not committed)."""
import math
from dataclasses import dataclass
import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class LayerNorm(nn.Module):
    def __init__(self, width, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout

    def forward(self, x):
        B, T, C = x.size()
        heads = [t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                 for t in self.c_attn(x).split(self.n_embd, dim=2)]
        q, k, v = heads
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=self.dropout if self.training else 0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1, self.attn = LayerNorm(cfg.n_embd, cfg.bias), CausalSelfAttention(cfg)
        self.ln_2, self.mlp = LayerNorm(cfg.n_embd, cfg.bias), MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=LayerNorm(cfg.n_embd, cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
'''


def load_nanogpt(path: str | None, scratch: Path):
    """nanoGPT's model module: read from ``path``, or the re-creation written into ``scratch``."""
    if path is None:
        source = scratch / "nanogpt_model.py"
        source.write_text(RECREATION)
        origin = "re-created from the published architecture (scratch file)"
    else:
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"--nanogpt: no file at {source}")
        origin = f"read from `{source}`"
    spec = importlib.util.spec_from_file_location("nanogpt_model", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, origin


def our_model(size: dict) -> torch.nn.Module:
    spec = {"name": "gpt", "n_layer": size["n_layer"], "n_head": size["n_head"], "n_embd": size["n_embd"],
            "positions": "learned", "tie_embeddings": True, "bias": False}
    return build_model(spec, (size["block_size"],), VOCAB)


def nano_model(module, size: dict) -> torch.nn.Module:
    cfg = module.GPTConfig(block_size=size["block_size"], vocab_size=VOCAB, n_layer=size["n_layer"],
                           n_head=size["n_head"], n_embd=size["n_embd"], dropout=0.0, bias=False)
    return module.GPT(cfg)


def ours_to_nanogpt(state: dict) -> dict:
    """Our parameter names -> nanoGPT's (same tensors)."""
    renames = [("tok_emb.", "transformer.wte."), ("pos_emb.", "transformer.wpe."), ("blocks.", "transformer.h."),
               (".ln1.", ".ln_1."), (".ln2.", ".ln_2."), (".attn.qkv.", ".attn.c_attn."),
               (".attn.proj.", ".attn.c_proj."), (".mlp.fc.", ".mlp.c_fc."), (".mlp.proj.", ".mlp.c_proj."),
               ("ln_f.", "transformer.ln_f."), ("head.", "lm_head.")]
    out = {}
    for name, value in state.items():
        for old, new in renames:
            if name.startswith(old) or (old.startswith(".") and old in name):
                name = name.replace(old, new, 1)
        out[name] = value
    return out


def make_step(model, x, y, nanogpt: bool):
    """One training step: forward, per-token cross-entropy, backward, AdamW
    (nanoGPT computes its loss inside ``forward``; ours goes through the project's loss)."""
    loss_fn = PerTokenLoss(build_loss("cross_entropy"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)[1] if nanogpt else loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step


def check_same_function(module, size: dict) -> float:
    """nanoGPT loaded with our weights gives our loss (returns the difference)."""
    torch.manual_seed(0)
    ours = our_model(size)
    nano = nano_model(module, size)
    missing, unexpected = nano.load_state_dict(ours_to_nanogpt(ours.state_dict()), strict=False)
    # nanoGPT's mask buffer (kept when it has no SDPA) and its head, which is tied to wte
    missing = [m for m in missing if not m.endswith(".attn.bias") and m != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping: missing {missing}, unexpected {unexpected}")
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (4, size["block_size"]), generator=gen)
    y = torch.randint(0, VOCAB, (4, size["block_size"]), generator=gen)
    with torch.no_grad():
        ref = nano(x, y)[1]
        got = PerTokenLoss(build_loss("cross_entropy"))(ours(x), y)
    diff = abs(float(ref) - float(got))
    if diff > 1e-5:
        raise RuntimeError(f"nanoGPT with our weights gives loss {float(ref)}, ours {float(got)}")
    return diff


def _rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_child(which: str, nanogpt_path: str, size: dict, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    module = None
    if which == "nanogpt":
        spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (size["batch"], size["block_size"]), generator=gen)
    y = torch.randint(0, VOCAB, (size["batch"], size["block_size"]), generator=gen)
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before = _rss_mib("VmRSS")
    model = our_model(size) if which == "ours" else nano_model(module, size)
    step = make_step(model, x, y, nanogpt=which == "nanogpt")
    for _ in range(3):
        step()
    queue.put(_rss_mib("VmHWM") - before)


def peak_memory_mib(which: str, nanogpt_path: str, size: dict, threads: int) -> float:
    """Peak RSS growth of a fresh process building one model and taking 3 steps."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(which, nanogpt_path, size, threads, queue))
    proc.start()
    value = queue.get(timeout=600)
    proc.join()
    return value


def measure(module, size: dict, repeats: int, steps: int) -> dict:
    torch.manual_seed(0)
    ours, nano = our_model(size), nano_model(module, size)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (size["batch"], size["block_size"]), generator=gen)
    y = torch.randint(0, VOCAB, (size["batch"], size["block_size"]), generator=gen)
    step_ours, step_nano = make_step(ours, x, y, False), make_step(nano, x, y, True)
    for _ in range(3):  # warm-up: allocator, AdamW state
        step_ours()
        step_nano()
    wall = {"ours": [], "nanogpt": []}
    cpu = {"ours": [], "nanogpt": []}
    fns = {"ours": step_ours, "nanogpt": step_nano}
    for r in range(repeats):
        order = ("ours", "nanogpt") if r % 2 == 0 else ("nanogpt", "ours")
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                fns[name]()
            cpu[name].append((time.process_time() - start_cpu) / steps)
            wall[name].append((time.perf_counter() - start) / steps)
    tokens = size["batch"] * size["block_size"]
    ratio = lambda t: [n / o for o, n in zip(t["ours"], t["nanogpt"])]  # > 1: ours faster
    return {
        "tok_s_ours": tokens / statistics.median(wall["ours"]),
        "tok_s_nano": tokens / statistics.median(wall["nanogpt"]),
        "tok_cpu_s_ours": tokens / statistics.median(cpu["ours"]),
        "tok_cpu_s_nano": tokens / statistics.median(cpu["nanogpt"]),
        "ratio_wall": statistics.median(ratio(wall)),
        "ratio": statistics.median(ratio(cpu)),
        "ratio_lo": min(ratio(cpu)),
        "ratio_hi": max(ratio(cpu)),
        "params": ours.num_params(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", help="path of nanoGPT's model.py (default: the re-creation)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="gpt_throughput_") as scratch:
        module, origin = load_nanogpt(args.nanogpt, Path(scratch))
        nano_path = args.nanogpt or str(Path(scratch) / "nanogpt_model.py")
        rows = []
        for name in args.sizes:
            size = SIZES[name]
            diff = check_same_function(module, size)
            result = measure(module, size, args.repeats, args.steps)
            mem = {w: peak_memory_mib(w, nano_path, size, args.threads) for w in ("ours", "nanogpt")}
            rows.append((name, size, result, mem, diff))
            print(name, result, mem, file=sys.stderr)
    command = "python benchmarks/gpt_throughput.py" + "".join(
        f" {a}" for a in sys.argv[1:]) if argv is None else "main(...)"
    lines = [
        "# GPT training throughput: descentlab vs nanoGPT",
        "",
        f"One training step (forward, cross-entropy over every token, backward, `torch.optim.AdamW` step), "
        f"no biases, no dropout, learned positions, tied embeddings, vocabulary {VOCAB} (characters); "
        f"torch {torch.__version__}, CPU, {args.threads} thread(s); median over {args.repeats} interleaved "
        f"repeats of {args.steps} steps each. nanoGPT's `model.py`: {origin}; loaded with our weights it gives "
        f"our loss (largest difference {max(r[4] for r in rows):.1e}). Peak memory: resident-set growth of a "
        f"fresh process building the model and taking 3 steps. The ratio is of CPU time (`time.process_time`), "
        f"which other jobs on a shared machine disturb less than wall time; the wall-time ratio is beside it. "
        f"Machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end. Command: `{command}`.",
        "",
        "| size | n_layer / n_head / n_embd | block x batch | params | ours tokens/s (wall; per CPU-s) "
        "| nanoGPT tokens/s (wall; per CPU-s) | ratio, CPU time (median) | ratio range | ratio, wall (median) "
        "| peak memory ours / nanoGPT (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, size, r, mem, _ in rows:
        lines.append(
            f"| {name} | {size['n_layer']} / {size['n_head']} / {size['n_embd']} | {size['block_size']} x {size['batch']} "
            f"| {r['params']:,} | {r['tok_s_ours']:,.0f}; {r['tok_cpu_s_ours']:,.0f} "
            f"| {r['tok_s_nano']:,.0f}; {r['tok_cpu_s_nano']:,.0f} | {r['ratio']:.3f} "
            f"| {r['ratio_lo']:.3f}–{r['ratio_hi']:.3f} | {r['ratio_wall']:.3f} | {mem['ours']:.1f} / {mem['nanogpt']:.1f} |"
        )
    lines += ["", "ratio: nanoGPT's time per step / ours (above 1: ours is faster)."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
