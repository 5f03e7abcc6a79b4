"""The ``reclora-pipeline`` command: one subcommand per stage of the pipeline.

    reclora-pipeline data --dataset ml-100k --out runs/ml-100k/data
    reclora-pipeline retrieve --data runs/ml-100k/data [--model embedded] [--mode semantic|recent]
    reclora-pipeline demo                     SIM vs LoRA vs RecLoRA on MovieLens-100K + SmolLM2-135M (CPU, minutes)
    reclora-pipeline run --preset full        every comparison and study on the whole test split (a GPU)
    reclora-pipeline push --run OUT --repo-id NAME   publish a RecLoRA recommender of a run

Each subcommand is a function that adds its parser to the subparsers and is registered with ``@command``; its
parser sets ``handler`` to the function that runs it and returns the exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Optional

COMMANDS: list = []


def command(register: Callable) -> Callable:
    """Register a function ``register(subparsers)`` that adds one subcommand."""
    COMMANDS.append(register)
    return register


# -- data ----------------------------------------------------------------------------------------------------------------
@command
def add_data_command(subparsers) -> None:
    from .data import DATASETS, DEFAULT_CORE, DEFAULT_MAX_BAD_FRACTION, DEFAULT_MIN_HISTORY

    parser = subparsers.add_parser(
        "data", help="read, filter, label and split a dataset (paper, Appendix A)",
        description="Read a dataset, apply k-core filtering, labels and the 8:1:1 global-time split, and write the "
                    "processed dataset with stats.json.",
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--source", default=None,
                        help="folder of the official files (default for ml-100k: the embedded copy in the recbole wheel)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--core", type=int, default=DEFAULT_CORE, help="k of the k-core filter (0: off)")
    parser.add_argument("--min-history", type=int, default=DEFAULT_MIN_HISTORY,
                        help="earlier interactions a sample needs")
    parser.add_argument("--split-ratio", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VALID", "TEST"))
    parser.add_argument("--max-bad-fraction", type=float, default=DEFAULT_MAX_BAD_FRACTION,
                        help="stop when more than this share of a file's rows is rejected")
    parser.add_argument("--label-threshold", type=float, default=None, help="override the dataset's label threshold")
    parser.add_argument("--label-rule", choices=(">=", ">"), default=None,
                        help="with --label-threshold: positive if rating >= or > the threshold")
    parser.add_argument("--time-field", default=None, help="GoodReads: date field used as the interaction time")
    parser.add_argument("--no-split-csv", action="store_true", help="do not write train.csv/valid.csv/test.csv")
    parser.set_defaults(handler=run_data)


def run_data(args) -> int:
    from .data import load_dataset

    options = {}
    if args.time_field is not None:
        if args.dataset != "goodreads":
            raise ValueError("--time-field applies to goodreads only")
        options["time_field"] = args.time_field
    started = time.perf_counter()
    dataset = load_dataset(
        args.dataset, args.source, core=args.core, min_history=args.min_history, split_ratio=args.split_ratio,
        max_bad_fraction=args.max_bad_fraction, label_threshold=args.label_threshold,
        label_inclusive=None if args.label_rule is None else args.label_rule == ">=", **options,
    )
    dataset.stats["total_seconds"] = time.perf_counter() - started
    dataset.save(args.out, split_csv=not args.no_split_csv)
    stats = dataset.stats
    print(dataset)
    print("positive rate: " + ", ".join(f"{k} {v:.4f}" for k, v in stats["positive_rate"].items() if v is not None))
    print(f"rows rejected: {stats['rows_rejected_total']} {stats['rows_rejected'] or ''}".rstrip())
    if stats["values_repaired"] or stats["values_unknown"]:
        print(f"values repaired: {stats['values_repaired']}; unknown: {stats['values_unknown']}")
    print(f"wrote {args.out} in {stats['total_seconds']:.1f}s (stats: {args.out / 'stats.json'})")
    return 0


# -- retrieve -------------------------------------------------------------------------------------------------------------
@command
def add_retrieve_command(subparsers) -> None:
    from .retriever import DEFAULT_K_LONG, DEFAULT_K_SHORT, DEFAULT_PCA_DIM, MODES, POOLINGS

    parser = subparsers.add_parser(
        "retrieve", help="long and short histories per sample (Long-Short Modality Retriever)",
        description="Encode the items with the LLM (cached), reduce with PCA, and keep each sample's K_long and "
                    "K_short most similar earlier items (or the most recent ones with --mode recent).",
    )
    parser.add_argument("--data", required=True, type=Path, help="folder written by `reclora-pipeline data`")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: DATA/retrieval/MODE)")
    parser.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M), a Hub id or a local folder")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="weights of the encoding model (default: fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--mode", choices=MODES, default="semantic")
    parser.add_argument("--k-long", type=int, default=DEFAULT_K_LONG)
    parser.add_argument("--k-short", type=int, default=DEFAULT_K_SHORT)
    parser.add_argument("--pooling", choices=POOLINGS, default="mean")
    parser.add_argument("--pca-dim", type=int, default=DEFAULT_PCA_DIM)
    parser.add_argument("--batch-size", type=int, default=64, help="items per forward pass")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per item description")
    parser.add_argument("--cache-dir", default=None, help="item encoding cache (default: ~/.cache/peft_reclora/item_encodings)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda when available)")
    parser.add_argument("--csv", action="store_true", help="also write histories.csv (item ids, readable)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run_retrieve)


def run_retrieve(args) -> int:
    from .data import RecDataset
    from .retriever import RetrieverConfig, retrieve

    started = time.perf_counter()
    dataset = RecDataset.load(args.data)
    config = RetrieverConfig(
        mode=args.mode, k_long=args.k_long, k_short=args.k_short, model=args.model, dtype=args.dtype, pooling=args.pooling,
        pca_dim=args.pca_dim, batch_size=args.batch_size, max_length=args.max_length, cache_dir=args.cache_dir,
        device=args.device, progress=not args.no_progress,
    )
    result = retrieve(dataset, config)
    out = args.out or args.data / "retrieval" / args.mode
    result.metadata["total_seconds"] = time.perf_counter() - started
    result.save(out)
    if args.csv:
        write_histories_csv(dataset, result, out / "histories.csv")
    encoding = result.metadata.get("encoding", {})
    if encoding:
        how = ("loaded from the cache" if encoding.get("cache") == "hit"
               else f"encoded in {encoding.get('encode_seconds', 0.0):.1f}s")
        print(f"item encodings: {encoding.get('items')} items {how} ({encoding.get('path')})")
    print(f"{args.mode} retrieval of {len(result)} samples (K_long {result.k_long}, K_short {result.k_short}) "
          f"in {result.metadata['retrieval_seconds']:.1f}s; wrote {out} ({result.metadata['total_seconds']:.1f}s in all)")
    return 0


def write_histories_csv(dataset, result, path: Path) -> None:
    import pandas as pd

    items = dataset.items["item_id"].to_numpy(dtype=object)

    def joined(table):
        return [" ".join(items[dataset.item_index[row[row >= 0]]]) for row in table]

    samples = dataset.samples.set_index("sample_id").loc[result.sample_id]
    pd.DataFrame({
        "sample_id": result.sample_id,
        "split": samples["split"].to_numpy(),
        "item_id": samples["item_id"].to_numpy(),
        "long_item_ids": joined(result.long),
        "short_item_ids": joined(result.short),
    }).to_csv(path, index=False)


# -- run / demo -------------------------------------------------------------------------------------------------------------
def _int_list(text: str) -> tuple:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _name_list(text: str) -> tuple:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_run_options(parser, default_preset: str) -> None:
    from .pipeline import LLM_MODEL_CHOICES

    parser.add_argument("--preset", choices=("demo", "full"), default=default_preset,
                        help="demo: SIM, LoRA r=8 and RecLoRA on a test subsample in minutes on a CPU; full: every "
                             "comparison and study on the whole test split (a GPU)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<dataset>-<preset>)")
    parser.add_argument("--dataset", default=None, help="ml-100k (default), ml-1m, ml-25m or goodreads")
    parser.add_argument("--source", default=None, help="folder of the dataset's official files")
    parser.add_argument("--base-model", default=None, help="'embedded' (SmolLM2-135M), a Hub id or a local folder")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--models", type=_name_list, default=None,
                        help=f"comma-separated LLM models, from {', '.join(LLM_MODEL_CHOICES)} "
                             "(lora: rank r; lora-same-params: rank num_meta_loras*r; ablations: RecLoRA without the "
                             "long, the short and both retrievers)")
    parser.add_argument("--crm", default=None, help="the CRM that feeds RecLoRA's gate (default sim)")
    parser.add_argument("--crm-baselines", type=_name_list, default=None,
                        help="comma-separated further CRMs: din, deepfm, dcnv2, autoint, gru4rec, sasrec")
    parser.add_argument("--retrieval", choices=("semantic", "recent"), default=None)
    parser.add_argument("--k-long", type=int, default=None)
    parser.add_argument("--k-short", type=int, default=None)
    parser.add_argument("--few-shot", type=int, default=None, help="few-shot training samples for the LLM")
    parser.add_argument("--few-shot-seed", type=int, default=None)
    parser.add_argument("--num-meta-loras", type=int, default=None)
    parser.add_argument("--r", type=int, default=None, help="rank of each meta-LoRA (and of the LoRA baseline)")
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None)
    parser.add_argument("--loss", choices=("vocab", "yes_no"), default=None,
                        help="answer-token loss over the vocabulary (as the paper) or over the Yes/No logits only")
    parser.add_argument("--crm-epochs", type=int, default=None)
    parser.add_argument("--crm-rc-layer", type=int, default=None,
                        help="hidden layer of the CRM whose output is R_c (default -1: the last)")
    parser.add_argument("--save-steps", type=int, default=None,
                        help="checkpoint the LLM tuning every N steps; a rerun resumes an interrupted model from them")
    parser.add_argument("--sweep-num-meta-loras", type=_int_list, default=None, metavar="N,N,...",
                        help="extra RecLoRA runs for the AUC-vs-num_meta_loras plot")
    parser.add_argument("--sweep-few-shot", type=_int_list, default=None, metavar="N,N,...",
                        help="extra RecLoRA and LoRA runs for the sample-efficiency plot")
    parser.add_argument("--test-samples", type=int, default=None,
                        help="score a seeded subsample of the test split of this size (0: the whole split)")
    parser.add_argument("--score-batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run_run)


@command
def add_run_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="the whole pipeline: data, retrieval, CRMs, Few2Many tuning, scoring, table and plots",
        description="Run every stage into one folder (reused when run again with the same settings) and print the "
                    "comparison table. Flags override the preset.",
    )
    _add_run_options(parser, "full")


@command
def add_demo_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the README's demo: MovieLens-100K + SmolLM2-135M, SIM vs LoRA vs RecLoRA on a CPU",
        description="Equivalent to `run --preset demo`: about ten minutes on two CPU cores.",
    )
    _add_run_options(parser, "demo")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_run(args) -> int:
    from .pipeline import PipelineConfig, run_pipeline

    overrides = {name: getattr(args, name) for name in (
        "dataset", "source", "base_model", "dtype", "models", "crm", "crm_baselines", "retrieval", "k_long", "k_short",
        "few_shot", "few_shot_seed", "num_meta_loras", "r", "epochs", "learning_rate", "batch_size",
        "gradient_checkpointing", "loss", "crm_epochs", "crm_rc_layer", "save_steps", "sweep_num_meta_loras",
        "sweep_few_shot", "score_batch_size", "seed",
    )}
    if args.test_samples:  # 0 means the whole test split, applied after the preset
        overrides["test_samples"] = args.test_samples
    dataset = args.dataset or "ml-100k"
    out = args.out or Path("runs") / f"{dataset}-{args.preset}"
    config = PipelineConfig.from_preset(args.preset, out=str(out), progress=not args.no_progress, **overrides)
    if args.test_samples == 0:
        config.test_samples = None
    if args.preset == "full" and not _cuda_available():
        print("note: the full preset tunes and scores many LLM models on the whole test split; without a GPU expect "
              "many hours (use `demo`, or --test-samples and --models to run a part)", file=sys.stderr)
    started = time.perf_counter()
    run_pipeline(config)
    print(f"\n{(out / 'results.md').read_text()}")
    print(f"wrote {out}/results.json, results.md, predictions/, plots/ in {time.perf_counter() - started:.0f} s")
    return 0


# -- push ---------------------------------------------------------------------------------------------------------------------
@command
def add_push_command(subparsers) -> None:
    from .publish import add_push_command as add_parser

    add_parser(subparsers)


# -- entry point ------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reclora-pipeline", description="The RecLoRA reference pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    from .data import DataFormatError

    try:
        return int(args.handler(args) or 0)
    except (DataFormatError, FileNotFoundError, ValueError, KeyError) as error:
        if args.verbose:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"reclora-pipeline {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
