"""AdaHessian x 4 lrs on the MNIST-1D MLP (the optimizer-slice workload of batched.py),
batched vs one by one, in one process, interleaved, medians.

    python benchmarks/batched_adahessian.py [steps=100] [repeats=3]
"""
import statistics, sys, tempfile, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
import batched as bench
from descentlab.data import build_dataset
from descentlab.train.batched import train_job

torch.set_num_threads(1)
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 100
specs = [s for s in bench.workload("optimizer-slice", 300, steps) if s["optimizer"]["name"] == "adahessian"]
print(len(specs), [s["optimizer"]["lr"] for s in specs], steps, "steps")
data = build_dataset(specs[0]["dataset"])
times = {True: [], False: []}
with tempfile.TemporaryDirectory() as tmp:
    warm = [dict(s, steps=2, log_every=1, eval_every=1, schedule={"name": "constant"}) for s in specs[:2]]
    for b in (True, False):
        train_job(warm, [data] * 2, [Path(tmp) / f"w{b}0", Path(tmp) / f"w{b}1"], batched=b, progress=False)
    for rep in range(int(sys.argv[2]) if len(sys.argv) > 2 else 3):
        for b in (False, True):
            dirs = [Path(tmp) / f"r{rep}{b}{k}" for k in range(len(specs))]
            t = time.perf_counter()
            train_job(specs, [data] * len(specs), dirs, batched=b, progress=False)
            times[b].append(time.perf_counter() - t)
            print("batched" if b else "one-by-one", round(times[b][-1], 2), flush=True)
one, bat = statistics.median(times[False]), statistics.median(times[True])
print(f"median one-by-one {one:.2f}s  batched {bat:.2f}s  speed-up {one / bat:.2f}x")
