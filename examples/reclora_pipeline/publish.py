"""Publishing a whole RecLoRA recommender to the Hugging Face Hub: the model card, the upload and ``push``.

    reclora-pipeline push --run runs/ml-100k --repo-id me/reclora-ml100k [--model RecLoRA] [--private]
                          [--revision REV] [--token T] [--dry-run] [--base-model ...]

The recommender is saved into a temporary folder (``RecLoraRecommender.save_pretrained``) and uploaded as one commit
through ``huggingface_hub.HfApi``: ``create_repo(exist_ok=True)``, ``create_branch`` when a revision is given, then
``upload_folder``. A dry run saves the folder the same way and lists its files without calling the Hub.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from huggingface_hub import ModelCardData

CARD_TAGS = ["reclora", "recommendation", "peft"]


@dataclass
class PushResult:
    """What a push sent (or, for a dry run, would send): ``files`` are (path in the repo, size in bytes)."""

    repo_id: str
    revision: Optional[str]
    private: bool
    files: list = field(default_factory=list)
    dry_run: bool = False
    commit_url: Optional[str] = None

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> str:
        where = f"{self.repo_id}" + (f" (revision {self.revision})" if self.revision else "")
        head = (f"dry run: would upload {len(self.files)} files ({_size(self.total_bytes)}) to {where}"
                if self.dry_run else f"uploaded {len(self.files)} files ({_size(self.total_bytes)}) to {where}")
        lines = [head] + [f"  {size:>12,d}  {path}" for path, size in self.files]
        if self.commit_url:
            lines.append(f"commit: {self.commit_url}")
        return "\n".join(lines)


def list_files(folder) -> list:
    """(relative path, size) of every file under ``folder``, sorted by path."""
    folder = Path(folder)
    return sorted((path.relative_to(folder).as_posix(), path.stat().st_size)
                  for path in folder.rglob("*") if path.is_file())


def push_recommender(recommender, repo_id: str, *, private: bool = False, revision: Optional[str] = None, token=None,
                     dry_run: bool = False, commit_message: str = "Upload RecLoRA recommender") -> PushResult:
    """Save ``recommender`` into a temporary folder and upload it to ``repo_id`` as one commit."""
    with tempfile.TemporaryDirectory(prefix="reclora-push-") as folder:
        recommender.save_pretrained(folder, repo_id=repo_id)
        result = PushResult(repo_id=repo_id, revision=revision, private=bool(private), files=list_files(folder),
                            dry_run=dry_run)
        if dry_run:
            return result
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", token=token)
        result.repo_id = getattr(url, "repo_id", None) or repo_id
        if revision is not None:
            api.create_branch(result.repo_id, branch=revision, exist_ok=True, repo_type="model", token=token)
        commit = api.upload_folder(repo_id=result.repo_id, folder_path=folder, commit_message=commit_message,
                                   revision=revision, repo_type="model", token=token)
        result.commit_url = getattr(commit, "commit_url", None) or (None if commit is None else str(commit))
    return result


# -- the model card ----------------------------------------------------------------------------------------------------
def model_card(config: dict, repo_id: Optional[str] = None, example: Optional[dict] = None) -> str:
    """``README.md`` of a published recommender: metadata, metrics, dataset and split, parts, usage."""
    base_id = config.get("base_model_id")
    data = ModelCardData(library_name="peft", base_model=base_id, tags=list(CARD_TAGS))
    dataset = config["dataset"]
    retrieval = config["retrieval"]
    crm = config["crm"]
    adapter = config.get("adapter") or {}
    source = repo_id or "path/to/this/folder"
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {config['model_name']}: a RecLoRA recommender for {dataset['name']}", "",
        "A personalized low-rank adapter (RecLoRA) for click-through-rate prediction with an LLM, published with "
        "everything it needs to score: the conventional recommender (CRM) whose user representation R_c drives the "
        "adapter's gate, the CRM's ID vocabulary, the item and user catalog the prompts are written from, the "
        "retriever settings (and item vectors) that pick the histories, and the prompt template with its answer "
        "tokens. The score of a request is P(Yes) of the LLM's answer.", "",
        "## Metrics", "",
        *metrics_table(config), "",
        "## Dataset and split", "",
        *dataset_lines(dataset), "",
        "## Parts", "",
        "| part | setting |", "|---|---|",
        f"| base model | `{base_id or config['base_model']}` (loaded as `{config['base_model']}`, dtype "
        f"{config.get('dtype')}) |",
        f"| adapter | RecLoRA, N_m {config['num_meta_loras']} meta-LoRAs of rank {adapter.get('r')}, lora_alpha "
        f"{adapter.get('lora_alpha')}, gate hidden {adapter.get('gate_hidden_dim')}, targets "
        f"{', '.join(adapter.get('target_modules') or [])} |",
        f"| CRM | {crm['name']} (`crm/`), R_c width crm_dim {crm['crm_dim']} (hidden layer {crm['rc_layer']}) |",
        f"| short history (prompt) | {_history_text(retrieval['short'], 'k_short')} |",
        f"| long history (CRM) | {_history_text(retrieval['long'], 'k_long')} |",
        f"| prompt | style {config['prompt'].get('style')!r}, answers {config['prompt'].get('yes_token')!r} / "
        f"{config['prompt'].get('no_token')!r} (token ids {config['prompt'].get('yes_token_id')} / "
        f"{config['prompt'].get('no_token_id')}), max_length {config['prompt'].get('max_length')} |",
        "",
        *([f"The adapter was trained on the weights `{config['base_model']}` resolves to; load it on the same "
           "weights (`base_model=` of `from_pretrained`), since another copy of the model scores differently.", ""]
          if config["base_model"] != config["base_model_id"] else []),
        "## Usage", "",
        "```python",
        "from reclora_pipeline.recommender import RecLoraRecommender",
        "",
        f'recommender = RecLoraRecommender.from_pretrained("{source}")  # base_model="..." for a local copy',
        f"scores = recommender.score([{json.dumps(example or _placeholder_request())}])  # P(Yes) per request",
        "```", "",
        "A request names a catalog user and item and lists the user's earlier interactions, oldest first, as "
        "`(item_id, rating)` pairs. A user outside the catalog needs a `profile` with the user fields of "
        "`catalog/users.csv` (pure ID fields such as a zip code may be left out); the CRM reads the padding token "
        "in place of its user id and of the ID fields it lacks.",
        "",
        "Or from the command line, publishing a pipeline run:", "",
        "```bash",
        f"reclora-pipeline push --run OUT --repo-id {repo_id or 'NAME'} --model {config['model_name']}",
        "```", "",
        "## Files", "",
        "- `adapter_config.json`, `adapter_model.safetensors`: the PEFT adapter (load it after `import peft_reclora`)",
        "- `crm/crm_config.json`, `crm/crm_model.safetensors`: the CRM",
        "- `vocabulary.json`: the CRM's ID vocabulary (values, offsets, ratings)",
        "- `catalog/items.csv`, `catalog/users.csv`: titles, attributes and profiles",
        *(["- `item_vectors.safetensors`: unit item vectors of the semantic retriever"]
          if any(retrieval[part]["mode"] == "semantic" for part in ("short", "long")) else []),
        "- `recommender.json`: every setting above, the metrics and the comparison table",
        "",
    ]
    return "\n".join(lines)


def metrics_table(config: dict) -> list:
    comparison = config.get("comparison") or {}
    name = config["model_name"]
    if not comparison and config.get("metrics"):
        comparison = {name: config["metrics"]}
    if not comparison:
        return ["No metrics were recorded for this run."]
    reference = config.get("reference_model") or name
    lines = [f"Measured on the {config['dataset'].get('metrics_split', 'test')} split of the run that trained it.", "",
             f"| model | kind | AUC | LogLoss | RelImpr of {reference} | n |", "|---|---|---|---|---|---|"]
    for model, entry in comparison.items():
        impr = "-" if entry.get("rel_impr") is None else f"{100 * entry['rel_impr']:+.2f}%"
        label = f"**{model}**" if model == name else model
        lines.append(f"| {label} | {entry.get('kind', '')} | {_number(entry.get('auc'))} | "
                     f"{_number(entry.get('logloss'))} | {impr} | {entry.get('n', '')} |")
    return lines


def dataset_lines(dataset: dict) -> list:
    options = dataset.get("options") or {}
    samples = dataset.get("samples") or {}
    ratio = options.get("split_ratio")
    split = "- split: by global time"
    if ratio:
        split += f", {':'.join(f'{part:g}' for part in ratio)} train/valid/test"
    if samples:
        split += f" ({', '.join(f'{name} {count}' for name, count in samples.items())} samples)"
    lines = [f"- dataset: `{dataset['name']}` ({dataset['users']} users, {dataset['items']} items, "
             f"{dataset['interactions']} interactions; label: {dataset.get('label_rule')})",
             f"- processing: {options.get('core', '?')}-core filter, at least {options.get('min_history', '?')} "
             "earlier interactions per sample",
             split]
    time_range = dataset.get("time_range") or {}
    if "test" in time_range:
        lines.append(f"- test period: {time_range['test'].get('first_utc')} to {time_range['test'].get('last_utc')}")
    lines.append(f"- dataset fingerprint: `{dataset.get('fingerprint', '')[:16]}`")
    return lines


def _history_text(settings: dict, k_name: str) -> str:
    text = f"{settings['mode']}, K {settings[k_name]}"
    if settings["mode"] == "semantic":
        pca = settings.get("pca") or {}
        text += (f"; cosine of item vectors ({settings.get('vector_dim', '?')}-d"
                 + (f", PCA of {settings.get('pooling')}-pooled {settings.get('model')} states" if pca else "") + ")")
    return text


def _placeholder_request() -> dict:
    return {"user_id": "USER", "item_id": "ITEM", "history": [["ITEM_1", 4], ["ITEM_2", 5]]}


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


# -- the command -------------------------------------------------------------------------------------------------------
def add_push_command(subparsers) -> None:
    """Add ``push`` to the ``reclora-pipeline`` subcommands."""
    parser = subparsers.add_parser(
        "push", help="publish a RecLoRA model of a run (adapter, CRM, vocabulary, catalog, retriever) to the Hub",
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
    from .recommender import RecLoraRecommender

    recommender = RecLoraRecommender.from_run(args.run, model=args.model, base_model=args.base_model, device="cpu")
    result = recommender.push_to_hub(args.repo_id, private=args.private, revision=args.revision, token=args.token,
                                     dry_run=args.dry_run, commit_message=args.commit_message)
    print(result.describe())
    return 0
