#!/usr/bin/env python3
"""Map-training throughput: `stitch map train` against the paper's PyTorch loop, same CPU, same run.

Both train the paper's autoencoder (default: Qwen2.5-0.5B -> 1.5B residual widths, 896 -> 1536,
hidden floor(sqrt(896*1536)) = 1173) with AdamW, lr 1e-4, micro-batches of 16 and 4 accumulated
backward passes per step, for one epoch over the same random rows, on the same number of
threads. PyTorch runs the loop the paper's code runs (nn.Linear/ReLU/nn.Linear, F.mse_loss,
(loss/accum).backward(), optimizer.step() every accum micro-batches) on in-memory tensors;
stitch reads the same rows from safetensors files. Each side's rows/s covers its training loop
only (no start-up, no file writing); peak RSS is each process's whole peak.

Usage: tools/.venv/bin/python tools/bench_map.py [--rows 8192] [--threads N] [--stitch build/stitch]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def torch_run(x_path: str, y_path: str, hidden: int, threads: int, batch: int, accum: int, lr: float, out: str) -> None:
    """The PyTorch side, in a process of its own so its peak RSS is its own."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    x = load_file(x_path)["s"]
    y = load_file(y_path)["t"]
    n, ds = x.shape
    dt = y.shape[1]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(ds, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, dt))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)

    def epoch(perm: torch.Tensor) -> None:
        micro = [perm[i : i + batch] for i in range(0, len(perm), batch)]
        for s in range(0, len(micro), accum):
            group = micro[s : s + accum]
            opt.zero_grad(set_to_none=True)
            for idx in group:
                loss = F.mse_loss(model(x[idx]), y[idx])
                (loss / len(group)).backward()
            opt.step()

    g = torch.Generator().manual_seed(0)
    epoch(torch.randperm(n, generator=g)[: batch * accum * 4])  # warm-up: 4 steps
    perm = torch.randperm(n, generator=g)
    t0 = time.perf_counter()
    epoch(perm)
    secs = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(json.dumps({"rows_per_s": n / secs, "seconds": secs, "peak_rss_mb": peak_mb,
                                     "torch": torch.__version__, "threads": torch.get_num_threads()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--d-src", type=int, default=896)
    ap.add_argument("--d-tgt", type=int, default=1536)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--stitch", default=str(ROOT / "build" / "stitch"))
    ap.add_argument("--reps", type=int, default=1, help="alternate the two sides this many times, report the best")
    ap.add_argument("--torch-side", nargs=3, metavar=("X", "Y", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, default=0)
    a = ap.parse_args()
    hidden = a.hidden or math.isqrt(a.d_src * a.d_tgt)
    if a.torch_side:
        torch_run(*a.torch_side[:2], hidden, a.threads, a.batch, a.accum, a.lr, a.torch_side[2])
        return

    import numpy as np
    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory(prefix="stitch-bench-map-") as tmp:
        rng = np.random.default_rng(0)
        xs, ys = os.path.join(tmp, "src.safetensors"), os.path.join(tmp, "tgt.safetensors")
        save_file({"s": rng.standard_normal((a.rows, a.d_src), dtype=np.float32)}, xs)
        save_file({"t": rng.standard_normal((a.rows, a.d_tgt), dtype=np.float32)}, ys)
        best_s, best_t = None, None
        for rep in range(a.reps):
            sj, tj = os.path.join(tmp, "stitch.json"), os.path.join(tmp, "torch.json")
            subprocess.run([a.stitch, "map", "train", "--source", xs, "--target", ys, "--val", "0", "--epochs", "1",
                            "--batch", str(a.batch), "--accum", str(a.accum), "--lr", str(a.lr), "--hidden", str(hidden),
                            "--device", "cpu", "--threads", str(a.threads), "-o", os.path.join(tmp, "map.safetensors"),
                            "--json", sj], check=True, stderr=subprocess.DEVNULL)
            subprocess.run([sys.executable, __file__, "--torch-side", xs, ys, tj, "--threads", str(a.threads),
                            "--batch", str(a.batch), "--accum", str(a.accum), "--lr", str(a.lr), "--hidden", str(hidden)],
                           check=True)
            s, t = json.loads(Path(sj).read_text()), json.loads(Path(tj).read_text())
            print(f"rep {rep + 1}: stitch {s['rows_per_s']:.0f} rows/s, PyTorch {t['rows_per_s']:.0f} rows/s", file=sys.stderr)
            if best_s is None or s["rows_per_s"] > best_s["rows_per_s"]:
                best_s = s
            if best_t is None or t["rows_per_s"] > best_t["rows_per_s"]:
                best_t = t
        print(f"map train throughput, autoencoder {a.d_src} -> {a.d_tgt} (hidden {hidden}), batch {a.batch} x accum "
              f"{a.accum}, {a.rows} rows, {a.threads} threads, best of {a.reps}")
        print(f"  stitch   {best_s['rows_per_s']:9.0f} rows/s   peak RSS {best_s['peak_rss_mb']:6.0f} MB")
        print(f"  PyTorch  {best_t['rows_per_s']:9.0f} rows/s   peak RSS {best_t['peak_rss_mb']:6.0f} MB   (torch {best_t['torch']})")
        print(f"  ratio    {best_s['rows_per_s'] / best_t['rows_per_s']:.2f}x")


if __name__ == "__main__":
    main()
