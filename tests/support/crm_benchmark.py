"""CPU cost of stage 1 at MovieLens-100K scale, on synthetic features of the same shape.

    python tests/support/crm_benchmark.py --models sim din --output crm_benchmark.json

Defaults mirror MovieLens-100K with the paper's history length: ~80,000 training samples, 8 fields, K_long = 60,
batch 1024, the run config's CRM sizes (``crm.model``; ``--hidden-dims 256 256 256`` gives the published code's MLP).
Prints one line per model and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from reclora_pipeline.config import CrmModelConfig
from reclora_pipeline.crm import CrmTrainingConfig, available_crms, evaluate_crm, precompute_crm_embeds, train_crm


sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_features import make_synthetic_splits  # noqa: E402  (next to this file)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=available_crms())
    parser.add_argument("--train-samples", type=int, default=80_000)
    parser.add_argument("--valid-samples", type=int, default=10_000)
    parser.add_argument("--history-length", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--embed-dim", type=int, default=CrmModelConfig().embed_dim)
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=list(CrmModelConfig().hidden_dims))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    splits = make_synthetic_splits(
        {"train": args.train_samples, "valid": args.valid_samples},
        num_users=943,
        num_items=1682,
        num_genres=18,
        history_length=args.history_length,
        extra_fields=4,
    )
    results = {
        "setup": {
            "train_samples": args.train_samples,
            "valid_samples": args.valid_samples,
            "fields": len(splits["train"].field_names),
            "history_length": args.history_length,
            "batch_size": args.batch_size,
            "embed_dim": args.embed_dim,
            "hidden_dims": args.hidden_dims,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
        },
        "models": {},
    }
    print(json.dumps(results["setup"]))
    for name in args.models:
        config = CrmTrainingConfig(epochs=args.epochs, patience=args.epochs, batch_size=args.batch_size)
        sizes = dict(embed_dim=args.embed_dim, hidden_dims=tuple(args.hidden_dims))
        model, report = train_crm(name, splits["train"], splits["valid"], config, model_kwargs=sizes, progress=False)
        start = time.perf_counter()
        metrics = evaluate_crm(model, splits["valid"])
        eval_seconds = time.perf_counter() - start
        start = time.perf_counter()
        precompute_crm_embeds(model, splits["train"], progress=False)
        rc_seconds = time.perf_counter() - start
        epoch_seconds = [epoch["train_seconds"] for epoch in report.history]
        row = {
            "epoch_seconds": epoch_seconds,
            "valid_seconds": eval_seconds,
            "rc_precompute_seconds_train_split": rc_seconds,
            "valid_auc": metrics["auc"],
            "parameters": report.num_parameters,
            "crm_dim": model.crm_dim,
        }
        results["models"][name] = row
        print(
            f"{name:8s} epoch {min(epoch_seconds):6.1f} s (first {epoch_seconds[0]:.1f} s)   valid scoring "
            f"{eval_seconds:5.2f} s   "
            f"R_c for {args.train_samples} samples {rc_seconds:5.2f} s   params {report.num_parameters:,}"
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
