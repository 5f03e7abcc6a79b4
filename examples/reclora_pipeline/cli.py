"""The ``reclora-pipeline`` command: one subcommand per use.

    reclora-pipeline data --dataset ml-100k --out runs/ml-100k/data
    reclora-pipeline retrieve --data runs/ml-100k/data [--model embedded] [--mode semantic|recent]
    reclora-pipeline demo                     SIM vs LoRA vs RecLoRA on MovieLens-100K + SmolLM2-135M (CPU, minutes)
    reclora-pipeline run --preset full        every comparison and study on the whole test split (a GPU)
    reclora-pipeline run --config run.toml --set tune.adapter.mixing=weights
    reclora-pipeline push --run OUT --repo-id NAME   publish a RecLoRA recommender of a run

The flags of ``data``, ``retrieve``, ``run`` and ``demo`` are generated from the config tree (``config.py``), so each
setting has one name (its path), its help and its default; the short names are the aliases its field declares.
Each subcommand is a function that adds its parser and is registered with ``@command``; its parser sets ``handler``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from .config import PRESET_HELP, PRESETS, DataConfig, LlmConfig, RetrievalConfig, RunConfig, preset_tree
from .flags import add_config_flags, add_file_flags, resolve_from_args, section_from_args


COMMANDS: list = []
# Top-level modules of the 'examples' extra (setup.cfg): without them a command says which extra to install.
EXTRA_MODULES = {"pandas", "sklearn", "scipy", "matplotlib", "gguf", "torch_rechub", "accelerate", "tomli"}


def command(register: Callable) -> Callable:
    """Register a function ``register(subparsers)`` that adds one subcommand."""
    COMMANDS.append(register)
    return register


def _parser(subparsers, name: str, **kwargs) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, allow_abbrev=False, **kwargs)


# -- data -------------------------------------------------------------------------------------------------------------
@command
def add_data_command(subparsers) -> None:
    parser = _parser(
        subparsers, "data", help="read, filter, label and split a dataset (paper, Appendix A)",
        description="Read a dataset, apply k-core filtering, labels and the 8:1:1 global-time split, and write the "
                    "processed dataset with stats.json. The flags are the data.* settings of a run.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--no-split-csv", action="store_true", help="do not write train.csv/valid.csv/test.csv")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    targets = add_config_flags(parser, RunConfig(), sections=["data"], bare=True, aliases=False)
    parser.set_defaults(handler=run_data, targets=targets)


def run_data(args) -> int:
    from .data import load_dataset

    data: DataConfig = section_from_args(DataConfig, args, args.targets)
    started = time.perf_counter()
    dataset = load_dataset(data.dataset, data.source, progress=not args.no_progress, **data.reader_options())
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


# -- retrieve ---------------------------------------------------------------------------------------------------------
@command
def add_retrieve_command(subparsers) -> None:
    parser = _parser(
        subparsers, "retrieve", help="long and short histories per sample (Long-Short Modality Retriever)",
        description="Encode the items with the LLM (cached), reduce with PCA, and keep each sample's K_long and "
                    "K_short most similar earlier items (or the most recent ones with --mode recent). The flags are "
                    "the retrieval.* settings of a run; --model and --dtype are llm.base_model and llm.dtype.",
    )
    parser.add_argument("--data", required=True, type=Path, help="folder written by `reclora-pipeline data`")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: DATA/retrieval/MODE)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda when available)")
    parser.add_argument("--csv", action="store_true", help="also write histories.csv (item ids, readable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    targets = add_config_flags(parser, RunConfig(), sections=["retrieval", "llm"], bare=True, aliases=False,
                               rename={"llm.base_model": "--model"})
    parser.set_defaults(handler=run_retrieve, targets=targets)


def run_retrieve(args) -> int:
    from .data import RecDataset
    from .retriever import retrieve

    retrieval: RetrievalConfig = section_from_args(RetrievalConfig, args, args.targets)
    llm: LlmConfig = section_from_args(LlmConfig, args, args.targets)
    started = time.perf_counter()
    dataset = RecDataset.load(args.data)
    result = retrieve(dataset, retrieval, encoder=llm.base_model, dtype=llm.dtype, device=args.device,
                      progress=not args.no_progress)
    out = args.out or args.data / "retrieval" / retrieval.mode
    result.metadata["total_seconds"] = time.perf_counter() - started
    result.save(out)
    if args.csv:
        write_histories_csv(dataset, result, out / "histories.csv")
    encoding = result.metadata.get("encoding", {})
    if encoding:
        how = ("loaded from the cache" if encoding.get("cache") == "hit"
               else f"encoded in {encoding.get('encode_seconds', 0.0):.1f}s")
        print(f"item encodings: {encoding.get('items')} items {how} ({encoding.get('path')})")
    print(f"{retrieval.mode} retrieval of {len(result)} samples (K_long {result.k_long}, K_short {result.k_short}) "
          f"in {result.metadata['retrieval_seconds']:.1f}s; wrote {out} "
          f"({result.metadata['total_seconds']:.1f}s in all)")
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


# -- run / demo -------------------------------------------------------------------------------------------------------
PRESET_CHOICES = (*PRESETS, "none")
RUN_USAGE = ("reclora-pipeline {command} [--preset {{" + ",".join(PRESET_CHOICES) + "}}] [--config FILE] "
             "[--set PATH=VALUE] [--<setting path> VALUE | --<alias> VALUE ...]")


def _add_run_options(parser, default_preset: str) -> None:
    described = "; ".join(f"{name}: {PRESET_HELP[name]}" for name in PRESETS)
    parser.add_argument("--preset", choices=PRESET_CHOICES, default=None,
                        help=f"{described}; none: the defaults of the config tree (default: {default_preset}, or the "
                             "'preset' a --config file names)")
    add_file_flags(parser)
    defaults = RunConfig.from_dict(preset_tree(default_preset))
    targets = add_config_flags(parser, defaults)
    parser.set_defaults(handler=run_every_stage, targets=targets, default_preset=default_preset)
    parser.epilog = (f"Defaults shown are those of the {default_preset} preset. Later layers win: defaults < preset "
                     "< --config files < flags < --set. Every setting is one flag named by its path; keys of "
                     "tune.adapter (RecLoraConfig / LoraConfig keyword arguments) and tune.training "
                     "(TrainingArguments keyword arguments) are set with --set. The resolved tree is written to "
                     "OUT/config.json.")


@command
def add_run_command(subparsers) -> None:
    parser = _parser(
        subparsers, "run", usage=RUN_USAGE.format(command="run"),
        help="the whole pipeline: data, retrieval, CRMs, Few2Many tuning, scoring, table and plots",
        description="Run every stage into one folder and print the comparison table. A stage is reused when the "
                    "folder holds its output for the same settings and inputs; a changed setting recomputes the "
                    "stages it reaches.",
    )
    _add_run_options(parser, "full")


@command
def add_demo_command(subparsers) -> None:
    parser = _parser(
        subparsers, "demo", usage=RUN_USAGE.format(command="demo"),
        help="the README's demo: MovieLens-100K + SmolLM2-135M, SIM vs LoRA vs RecLoRA on a CPU",
        description="Equivalent to `run --preset demo`: about 12 minutes on two CPU cores after installation.",
    )
    _add_run_options(parser, "demo")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_config(args) -> RunConfig:
    """The config of a ``run`` / ``demo`` command line (``OUT`` defaults to runs/<dataset>-<preset>)."""
    config, out_given, preset = resolve_from_args(args, args.targets, args.default_preset)
    args.chosen_preset = preset
    if not out_given:
        config = config.override({"out": str(Path("runs") / f"{config.data.dataset}-{preset}")})
    from .validation import validate  # PEFT, transformers and torch: not for --help

    return validate(config)


def run_every_stage(args) -> int:
    """The handler of ``run`` and ``demo``."""
    from .pipeline import run_pipeline

    config = run_config(args)
    if args.chosen_preset == "full" and not _cuda_available():
        print("note: the full preset tunes and scores many LLM models on the whole test split; without a GPU expect "
              "many hours (use `demo`, or --test-samples and --models to run a part)", file=sys.stderr)
    started = time.perf_counter()
    run_pipeline(config)
    out = Path(config.out)
    print(f"\n{(out / 'results.md').read_text()}")
    print(f"wrote {out}/results.json, results.md, predictions/, plots/ in {time.perf_counter() - started:.0f} s "
          f"(settings: {out / 'config.json'})")
    return 0


# -- push -------------------------------------------------------------------------------------------------------------
@command
def add_push_command(subparsers) -> None:
    parser = _parser(
        subparsers, "push",
        help="publish a RecLoRA model of a run (adapter, CRM, vocabulary, catalog, retriever) to the Hub",
        description="Save a RecLoRA model of a pipeline run with its CRM, vocabulary, catalog, retriever settings, "
                    "prompt template and a model card, and upload the folder to a Hub repo as one commit.",
    )
    parser.add_argument("--run", required=True, type=Path, help="the pipeline run folder (OUT)")
    parser.add_argument("--repo-id", required=True, help="the Hub repo, e.g. me/reclora-ml100k")
    parser.add_argument("--model", default="RecLoRA", help="the model of the run to publish (default: RecLoRA)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="the branch to upload to (created if needed)")
    parser.add_argument("--token", default=None, help="Hub token (default: the saved login or HF_TOKEN)")
    parser.add_argument("--base-model", default=None,
                        help="the base model id to record instead of the run's (e.g. its Hub id)")
    parser.add_argument("--commit-message", default="Upload RecLoRA recommender")
    parser.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded; upload nothing")
    parser.set_defaults(handler=run_push)


def run_push(args) -> int:
    from .serving.recommender import RecLoraRecommender

    recommender = RecLoraRecommender.from_run(args.run, model=args.model, base_model=args.base_model, device="cpu")
    result = recommender.push_to_hub(args.repo_id, private=args.private, revision=args.revision, token=args.token,
                                     dry_run=args.dry_run, commit_message=args.commit_message)
    print(result.describe())
    return 0


# -- entry point ------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reclora-pipeline", description="The RecLoRA reference pipeline.",
                                     allow_abbrev=False)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details; show tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except ModuleNotFoundError as error:
        if args.verbose or (error.name or "").split(".")[0] not in EXTRA_MODULES:
            raise
        print(f"reclora-pipeline {args.command}: error: the module {error.name!r} is missing. The pipeline needs the "
              "'examples' extra: pip install -e '.[examples]' from a clone of peft-reclora", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError) as error:  # DataFormatError is a ValueError
        if args.verbose:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"reclora-pipeline {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
