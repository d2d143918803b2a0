import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# One thread: tiny tensors run far slower with torch's default thread pool on
# a shared 2-core machine (a 30x slowdown was measured), and CI has 2 cores.
torch.set_num_threads(1)
