"""Tiled retrieval recall at scale: peak memory and wall time against the bare GEMM and the naive full matrix.

Every measurement runs in a fresh child process that builds its inputs (random unit vectors, seeded), notes its
resident size, resets the kernel's peak (`VmHWM`), runs one method and reports the growth of the peak over that
resident size: the memory the method needs beyond its inputs, the running top-k lists included. The children run
with glibc placing every block of 64 KB or more in its own mapping, so pages freed while the inputs were built are
not silently reused by the method (which would hide part of its memory). The table prints beside it what the
method's own buffers come to: K·(N + M) scores and indices for the top-k lists, plus the score tiles.

Threads: the GEMM of every tile uses torch's threads; the ranking (thresholds, merges of the top-k lists) runs on
one thread, since its small operations gain nothing from a second one. So on an idle machine the tiled method leaves
cores idle that the GEMM alone would use. `--busy` (the default is both) repeats the GEMM and tiled cells with one
busy-looping process per core running beside each of them, as on a shared machine, so both arms compete for every
core; the ratio measured there is the one a shared machine sees. Wall times of one table are measured in the same
session, so compare their ratios.

Methods:
    gemm    the same chunked matrix product as `retrieval_recall` (same tiles and dtype, into a reused buffer),
            with no ranking: the floor for any exact method.
    tiled   `seeyou_ml.evaluation.retrieval_recall`, top-10 both directions.
    naive   the full N×M score matrix and `torch.topk` along both axes (what fits only at small sizes).

Usage:
    python benchmarks/retrieval_scale.py                      # 100k images × 500k captions, then 10k × 50k naive
    python benchmarks/retrieval_scale.py --n 20000 --m 100000 --dtypes fp32 --load idle,busy
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MEMORY_ENV, reset_peak, resident_mb  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CAPTIONS_PER_IMAGE = 5
def _buffers_mb(method: str, n: int, m: int, k: int, chunk_size: int, dtype: torch.dtype) -> float:
    """The method's own buffers: top-k lists (fp32 score + int64 index per entry) and score tiles."""
    tile = min(chunk_size, n) * min(chunk_size, m)
    if method == "gemm":
        return tile * dtype.itemsize / 2**20
    if method == "naive":
        return n * m * dtype.itemsize / 2**20
    tiles = tile * (dtype.itemsize + (4 if dtype != torch.float32 else 0))  # bf16 products + fp32 copy
    return ((n + m) * k * (4 + 8) + tiles) / 2**20


def _unit_vectors(count: int, dim: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(count, dim, dtype=dtype)
    # Small slices keep the transient of building the inputs (two 4096×D fp32 blocks, 16 MB at D=512) below the
    # memory the methods need, so the peak measured after the inputs exist is the method's own.
    for start in range(0, count, 4096):
        block = torch.randn(min(4096, count - start), dim, generator=generator)
        out[start : start + block.shape[0]] = torch.nn.functional.normalize(block, dim=1)
    return out


def _run_child(method: str, n: int, m: int, dim: int, dtype_name: str, chunk_size: int, k: int) -> dict:
    from seeyou_ml.evaluation import retrieval_recall

    dtype = DTYPES[dtype_name]
    images = _unit_vectors(n, dim, 0, dtype)
    captions = _unit_vectors(m, dim, 1, dtype)
    owners = torch.arange(m) % n
    baseline = resident_mb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    recalls = None
    if method == "gemm":
        buffer = torch.empty(min(chunk_size, m) * min(chunk_size, n), dtype=dtype)
        for row in range(0, m, chunk_size):
            rows = captions[row : row + chunk_size]
            for col in range(0, n, chunk_size):
                cols = images[col : col + chunk_size]
                torch.mm(rows, cols.T, out=buffer[: rows.shape[0] * cols.shape[0]].view(rows.shape[0], -1))
    elif method == "tiled":
        recalls = retrieval_recall(images, captions, owners, ks=(1, 5, k), chunk_size=chunk_size, dtype=dtype)
    elif method == "naive":
        scores = images @ captions.T  # (N, M), the whole matrix
        image_topk = torch.topk(scores, k, dim=1).indices  # (N, k)
        text_topk = torch.topk(scores, k, dim=0).indices.T  # (M, k)
        image_hits = owners[image_topk] == torch.arange(n)[:, None]
        text_hits = text_topk == owners[:, None]
        recalls = {}
        for cut in (1, 5, k):
            recalls[f"image_to_text/R@{cut}"] = 100.0 * image_hits[:, :cut].any(1).double().mean().item()
            recalls[f"text_to_image/R@{cut}"] = 100.0 * text_hits[:, :cut].any(1).double().mean().item()
    else:
        raise ValueError(f"unknown method {method!r}; use gemm, tiled or naive.")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_extra_mb": resident_mb("VmHWM") - baseline, "inputs_mb": baseline,
            "buffers_mb": _buffers_mb(method, n, m, k, chunk_size, dtype), "recalls": recalls}


def _measure(method: str, n: int, m: int, args: argparse.Namespace, dtype_name: str, busy: bool = False) -> dict:
    """Runs one method in a fresh child; with `busy`, one spinning process per core runs beside it throughout."""
    command = [sys.executable, __file__, "--child", method, "--n", str(n), "--m", str(m), "--dim", str(args.dim),
               "--dtypes", dtype_name, "--chunk-size", str(args.chunk_size), "--k", str(args.k)]
    # Spinners share the cores with the method only under time-sharing: under a first-in-first-out real-time
    # policy (e.g. started with `chrt -f`) a spinner would hold its core for good, so they drop to the normal policy.
    normal = None
    if hasattr(os, "sched_setscheduler"):
        normal = lambda: os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))  # noqa: E731
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=normal)
                for _ in range(os.cpu_count() or 1) if busy]
    try:
        output = subprocess.run(command, check=True, capture_output=True, text=True,
                                env={**os.environ, **MEMORY_ENV}, preexec_fn=normal if busy else None).stdout
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    result = json.loads(output.strip().splitlines()[-1])
    print(f"  {method:<6} {dtype_name} {n}×{m}{' busy' if busy else ''}: {result['seconds']:.1f} s, "
          f"+{result['peak_extra_mb']:.0f} MB (own buffers {result['buffers_mb']:.0f} MB)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="images")
    parser.add_argument("--m", type=int, default=500_000, help="captions")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10, help="largest recall cut-off")
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated: fp32, bf16")
    parser.add_argument("--naive-n", type=int, default=10_000, help="images for the naive comparison (0 skips it)")
    parser.add_argument("--naive-m", type=int, default=50_000, help="captions for the naive comparison")
    parser.add_argument("--load", default="idle,busy",
                        help="comma-separated: idle (nothing of ours beside the method), busy (one spinning process "
                             "per core beside each GEMM and tiled run)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run_child(args.child, args.n, args.m, args.dim, args.dtypes, args.chunk_size, args.k)))
        return

    print(f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads for the GEMM, 1 thread for the ranking, chunk {args.chunk_size}, "
          f"D={args.dim}, load average {os.getloadavg()[0]:.1f}")
    rows = []
    for dtype_name in args.dtypes.split(","):
        if args.naive_n:
            naive = _measure("naive", args.naive_n, args.naive_m, args, dtype_name)
            tiled = _measure("tiled", args.naive_n, args.naive_m, args, dtype_name)
            gemm = _measure("gemm", args.naive_n, args.naive_m, args, dtype_name)
            same = max(abs(naive["recalls"][key] - value) for key, value in tiled["recalls"].items()
                       if key in naive["recalls"])
            rows.append((dtype_name, args.naive_n, args.naive_m, "idle", gemm, tiled, naive, same))
        for load in args.load.split(","):
            busy = load == "busy"
            # Alternating the order keeps a slow spell of the shared machine from always hitting the same arm.
            gemm = _measure("gemm", args.n, args.m, args, dtype_name, busy)
            tiled = _measure("tiled", args.n, args.m, args, dtype_name, busy)
            gemm_again = _measure("gemm", args.n, args.m, args, dtype_name, busy)
            gemm = min(gemm, gemm_again, key=lambda result: result["seconds"])
            rows.append((dtype_name, args.n, args.m, load, gemm, tiled, None, None))

    header = (f"{'dtype':<5} {'N×M':>15} {'load':>5} {'GEMM s':>8} {'tiled s':>8} {'tiled/GEMM':>10} "
              f"{'tiled +MB':>9} {'buffers MB':>10} {'naive s':>8} {'naive +MB':>9} {'naive/tiled s':>13} "
              f"{'naive/tiled MB':>14} {'max|ΔR@k|':>9}")
    print("\n" + header + "\n" + "-" * len(header))
    for dtype_name, n, m, load, gemm, tiled, naive, same in rows:
        line = (f"{dtype_name:<5} {f'{n}×{m}':>15} {load:>5} {gemm['seconds']:8.1f} {tiled['seconds']:8.1f} "
                f"{tiled['seconds'] / gemm['seconds']:10.2f} {tiled['peak_extra_mb']:9.0f} "
                f"{tiled['buffers_mb']:10.0f}")
        if naive is None:
            line += f" {'-':>8} {'-':>9} {'-':>13} {'-':>14} {'-':>9}"
        else:
            line += (f" {naive['seconds']:8.1f} {naive['peak_extra_mb']:9.0f} "
                     f"{naive['seconds'] / tiled['seconds']:13.2f} "
                     f"{naive['peak_extra_mb'] / max(tiled['peak_extra_mb'], 1.0):14.1f} {same:9.3f}")
        print(line)
    print("\nmax|ΔR@k|: largest difference of a recall (points) between naive and tiled; naive breaks score ties")
    print("arbitrarily (torch.topk), tiled by lowest index, so bf16 (many ties) may differ slightly.")
    print("+MB: growth of the process's peak resident size over its resident size once the inputs exist (VmHWM "
          "reset after building them, fresh process per cell); buffers MB: the tiled method's top-k lists "
          "(K·(N+M) fp32 scores and int64 indices) and score tiles, for comparison.")
    print("GEMM: the faster of two runs, one before and one after the tiled run. The GEMM uses every thread, the "
          "ranking one; busy: one spinning process per core beside each run, on both arms.")


if __name__ == "__main__":
    main()
