"""Time and memory of the Long-Short Modality Retriever on a synthetic dataset shaped like MovieLens-25M.

The synthetic data has ML-25M's size (162,541 users, 59,047 items, 25,000,095 ratings) and a similar skew of ratings
per user (at least 20, median about 71, a long tail up to about 30k), a few ratings in the same second, and random
unit item vectors of the PCA width (512). Items are drawn uniformly, so a user may repeat one: that changes nothing in
the cost, which depends only on the history lengths. Samples are the ratings with at least 5 earlier ones, as in the
data stage. The script runs the same ``semantic_top_k`` / ``recent_k`` functions as ``reclora-pipeline retrieve``.

    python benchmarks/bench_retrieval.py                      # the full ML-25M shape
    python benchmarks/bench_retrieval.py --fraction 0.1       # 10 % of the users; times also extrapolated

Peak memory is sampled from /proc (RSS) during each phase. Results are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from reclora_pipeline.data.history import history_ends  # noqa: E402
from reclora_pipeline.retriever import recent_k, semantic_top_k  # noqa: E402


ML25M = {"users": 162_541, "items": 59_047, "interactions": 25_000_095}


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Samples the process RSS every few milliseconds while the block runs."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start = rss_bytes()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def synthetic_sequences(users: int, items: int, interactions: int, seed: int):
    """Per-user time-sorted interactions: (user_index, item_index, timestamps, user_offsets)."""
    rng = np.random.default_rng(seed)
    extra = rng.lognormal(mean=np.log(51.0), sigma=1.3, size=users)
    extra *= (interactions - 20 * users) / extra.sum()  # exactly the requested total (after rounding below)
    lengths = 20 + np.floor(extra).astype(np.int64)
    shortfall = interactions - lengths.sum()
    lengths[rng.choice(users, size=int(shortfall), replace=False)] += 1
    offsets = np.zeros(users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    user = np.repeat(np.arange(users, dtype=np.int32), lengths)
    item = rng.integers(0, items, size=interactions, dtype=np.int32)
    gaps = rng.integers(1, 86_400, size=interactions, dtype=np.int64)
    gaps[rng.random(interactions) < 0.03] = 0  # ratings in the same second
    clock = np.cumsum(gaps)
    timestamp = clock - np.repeat(clock[offsets[:-1]], lengths) + 1_000_000_000
    return user, item, timestamp, offsets, lengths


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=ML25M["users"])
    parser.add_argument("--items", type=int, default=ML25M["items"])
    parser.add_argument("--interactions", type=int, default=ML25M["interactions"])
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="share of the users to retrieve for (times are extrapolated by scored pairs when < 1)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k-long", type=int, default=60)
    parser.add_argument("--k-short", type=int, default=10)
    parser.add_argument("--min-history", type=int, default=5)
    parser.add_argument("--block-elements", type=int, default=1 << 24)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "retrieval_ml25m_shape.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    user, item, timestamp, offsets, lengths = synthetic_sequences(args.users, args.items, args.interactions, args.seed)
    history_end = history_ends(user, timestamp)
    history_length = history_end - offsets[user]
    rng = np.random.default_rng(args.seed + 1)
    chosen_users = np.sort(rng.choice(args.users, size=max(1, int(round(args.fraction * args.users))), replace=False))
    in_sample = np.zeros(args.users, dtype=bool)
    in_sample[chosen_users] = True
    rows = np.flatnonzero((history_length >= args.min_history) & in_sample[user])
    all_samples = int((history_length >= args.min_history).sum())
    vectors = rng.normal(size=(args.items, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    setup_seconds = time.perf_counter() - started
    # Work: every scored sample compares its target with each earlier item (samples with <= k_short earlier items
    # take them all without scoring).
    scored = history_length[rows] > min(args.k_long, args.k_short)
    pairs = int(history_length[rows][scored].sum())
    all_pairs = int(history_length[(history_length >= args.min_history)
                                   & (history_length > min(args.k_long, args.k_short))].sum())
    del history_length

    print(f"synthetic ML-25M shape: {args.users:,} users, {args.items:,} items, {args.interactions:,} ratings "
          f"(per user: median {int(np.median(lengths))}, mean {lengths.mean():.1f}, max {lengths.max():,}); "
          f"{all_samples:,} samples; built in {setup_seconds:.1f}s")
    print(f"retrieving for {len(rows):,} samples ({args.fraction:.0%} of the users), {pairs:,} target-history pairs "
          f"of {all_pairs:,}")

    with PeakMemory() as memory:
        t0 = time.perf_counter()
        long, short = semantic_top_k(vectors, item_index=item, user_offsets=offsets, history_end=history_end,
                                     rows=rows, k_long=args.k_long, k_short=args.k_short, device=args.device,
                                     block_elements=args.block_elements, progress=True)
        semantic_seconds = time.perf_counter() - t0
    semantic_memory = {"rss_before_gib": memory.start / 2**30, "rss_peak_gib": memory.peak / 2**30,
                       "output_gib": (long.nbytes + short.nbytes) / 2**30}
    del long, short
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        long, short = recent_k(offsets, history_end, rows, args.k_long, args.k_short)
        recent_seconds = time.perf_counter() - t0
    recent_memory = {"rss_before_gib": memory.start / 2**30, "rss_peak_gib": memory.peak / 2**30}
    del long, short

    scale = all_pairs / pairs if pairs else float("nan")
    result = {
        "benchmark": "bench_retrieval",
        "description": "retrieval on a synthetic dataset of MovieLens-25M's shape",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "device": (args.device if args.device != "cpu"
                   else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"),
        "shape": {"users": args.users, "items": args.items, "interactions": args.interactions,
                  "samples": all_samples,
                  "ratings_per_user": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                                       "mean": float(lengths.mean()), "max": int(lengths.max())},
                  "target_history_pairs": all_pairs, "dim": args.dim},
        "measured": {"fraction_of_users": args.fraction, "samples": int(len(rows)), "target_history_pairs": pairs,
                     "semantic_seconds": semantic_seconds, "semantic_memory": semantic_memory,
                     "recent_seconds": recent_seconds, "recent_memory": recent_memory,
                     "pairs_per_second": pairs / semantic_seconds if semantic_seconds else None},
        "extrapolated_full_semantic_seconds": None if args.fraction >= 1 else semantic_seconds * scale,
        "settings": {"k_long": args.k_long, "k_short": args.k_short, "min_history": args.min_history,
                     "block_elements": args.block_elements, "device": args.device, "seed": args.seed},
        "environment": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    print(f"semantic: {semantic_seconds:.1f}s for {len(rows):,} samples "
          f"({result['measured']['pairs_per_second']:.3g} pairs/s), "
          f"peak RSS {semantic_memory['rss_peak_gib']:.2f} GiB (before {semantic_memory['rss_before_gib']:.2f}, "
          f"output {semantic_memory['output_gib']:.2f})")
    if args.fraction < 1:
        print(f"  extrapolated to all users by scored pairs: {result['extrapolated_full_semantic_seconds']:.0f}s")
    print(f"recent: {recent_seconds:.1f}s, peak RSS {recent_memory['rss_peak_gib']:.2f} GiB")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
