"""Publishing a whole RecLoRA recommender to the Hugging Face Hub: the model card and the upload, which
``RecLoraRecommender.push_to_hub`` and the ``push`` command (``cli.py``) use.

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

from huggingface_hub import HfApi, ModelCardData

from ..llm import EMBEDDED_HUB_ID, GEMMA3_HUB_ID, is_embedded, is_gemma3, is_gguf_path
from ..provenance import provenance_lines


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
        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", token=token)
        result.repo_id = getattr(url, "repo_id", None) or repo_id
        if revision is not None:
            api.create_branch(result.repo_id, branch=revision, exist_ok=True, repo_type="model", token=token)
        commit = api.upload_folder(repo_id=result.repo_id, folder_path=folder, commit_message=commit_message,
                                   revision=revision, repo_type="model", token=token)
        result.commit_url = getattr(commit, "commit_url", None) or (None if commit is None else str(commit))
    return result


# -- the model card ---------------------------------------------------------------------------------------------------
def public_model_id(base_model: str) -> Optional[str]:
    """The Hub id a base model is known by: the named models' ids, a Hub id as it is, ``None`` for a local folder or
    .gguf file (its path means nothing elsewhere; ``--base-model`` records an id instead)."""
    if is_embedded(base_model):
        return EMBEDDED_HUB_ID
    if is_gemma3(base_model):
        return GEMMA3_HUB_ID
    text = str(base_model)
    if (is_gguf_path(text) or Path(text).expanduser().exists() or text.startswith((".", "/", "~"))
            or text.count("/") > 1):
        return None
    return text



def quantized_note(record) -> str:
    """How a quantized base was loaded in training (and is loaded again by the recommender), or nothing."""
    quantization = record.config.llm.quantization
    return "" if quantization == "none" else f", {quantization} (bitsandbytes)"


def model_card(record, adapter_config: dict, repo_id: Optional[str] = None, example: Optional[dict] = None) -> str:
    """``README.md`` of a published recommender: metadata, metrics, dataset and split, parts, usage."""
    config = record.config
    base = record.base_model_to_load
    base_id = public_model_id(base)
    data = ModelCardData(library_name="peft", base_model=base_id, tags=list(CARD_TAGS))
    dataset = record.dataset
    source = repo_id or "path/to/this/folder"
    tokens = record.answer_tokens
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {record.model.name}: a RecLoRA recommender for {dataset.name}", "",
        "A personalized low-rank adapter (RecLoRA) for click-through-rate prediction with an LLM, published with "
        "everything it needs to score: the conventional recommender (CRM) whose user representation R_c drives the "
        "adapter's gate, the CRM's ID vocabulary, the item and user catalog the prompts are written from, the "
        "retriever settings (and item vectors) that pick the histories, and the prompt template with its answer "
        "tokens. The score of a request is P(Yes) of the LLM's answer.", "",
        "## Metrics", "",
        *metrics_table(record), "",
        "## Dataset and split", "",
        *dataset_lines(record), "",
        "## Parts", "",
        "| part | setting |", "|---|---|",
        f"| base model | `{base_id or base}`{'' if base == base_id else f' (loaded as `{base}`)'}, trained in "
        f"{record.trained_dtype}{quantized_note(record)} on the content `{record.lineage.base_model_identity}` |",
        f"| adapter | RecLoRA, N_m {adapter_config.get('num_meta_loras')} meta-LoRAs of rank "
        f"{adapter_config.get('r')}, "
        f"lora_alpha {adapter_config.get('lora_alpha')}, gate hidden {adapter_config.get('gate_hidden_dim')}, mixing "
        f"{adapter_config.get('mixing')}, gate {adapter_config.get('gate_sharing')}, targets "
        f"{', '.join(sorted(adapter_config.get('target_modules') or []))} |",
        f"| CRM | {config.crm.name} (`crm/`), R_c width crm_dim {adapter_config.get('crm_dim')} (hidden layer "
        f"{config.crm.model.rc_layer}) |",
        f"| short history (prompt) | {_history_text(record, 'short', base_id or base)} |",
        f"| long history (CRM) | {_history_text(record, 'long', base_id or base)} |",
        f"| prompt | template {config.prompt.template!r}, style {config.prompt.style!r}, answers "
        f"{tokens.yes_token!r} / {tokens.no_token!r} (token ids {tokens.yes_token_id} / {tokens.no_token_id}), "
        f"max_tokens {config.prompt.max_tokens} |",
        "",
        *([f"The adapter was trained on the weights `{base}` resolves to; load it on the same weights (`base_model=` "
           "of `from_pretrained`), since another copy of the model scores differently.", ""]
          if base != base_id else []),
        "Loading checks the base model's content against the identity above (a sha256 of its weight, tokenizer and "
        "config files, or its Hub commit) and refuses another one unless `allow_other_base_model=True` is passed.", "",
        *provenance_lines(record.provenance),
        "## Usage", "",
        "```python",
        "from reclora_pipeline.serving import RecLoraRecommender",
        "",
        f'recommender = RecLoraRecommender.from_pretrained("{source}")  # base_model="..." for a local copy',
        f"scores = recommender.score([{json.dumps(example or _placeholder_request())}])  # P(Yes) per request",
        "```", "",
        "A request names a catalog user and item and lists the user's earlier interactions, oldest first, as "
        "`(item_id, rating)` pairs. A user outside the catalog needs a `profile` with the user fields of "
        "`catalog/users.csv` (pure ID fields such as a zip code may be left out); the CRM reads the padding token "
        "in place of its user id and of the ID fields it lacks or whose value it does not know. An item outside the "
        "catalog cannot be scored.",
        "",
        "Or from the command line, publishing a pipeline run:", "",
        "```bash",
        f"reclora-pipeline push --run OUT --repo-id {repo_id or 'NAME'} --model {record.model.name!r}",
        "```", "",
        "## Files", "",
        "- `adapter_config.json`, `adapter_model.safetensors`: the PEFT adapter (load it after `import peft_reclora`)",
        "- `crm/crm_config.json`, `crm/crm_model.safetensors`: the CRM",
        "- `vocabulary.json`: the CRM's ID vocabulary (values, offsets, ratings)",
        "- `catalog/items.csv`, `catalog/users.csv`: titles, attributes and profiles",
        *(["- `item_vectors.safetensors`: unit item vectors of the semantic retriever"]
          if "semantic" in record.modes else []),
        "- `recommender.json`: the run's settings (its config tree), the model's histories, answer tokens, the "
        "lineage of the parts and the metrics",
        "",
    ]
    return "\n".join(lines)


def metrics_table(record) -> list:
    comparison = record.metrics
    if not comparison:
        return ["No metrics were recorded for this run."]
    name = record.model.name
    reference = record.reference_model or name
    lines = ["Measured on the test samples of the run that trained it.", "",
             f"| model | kind | AUC | LogLoss | RelImpr of {reference} | n |", "|---|---|---|---|---|---|"]
    for model, entry in comparison.items():
        impr = "-" if entry.get("rel_impr") is None else f"{100 * entry['rel_impr']:+.2f}%"
        label = f"**{model}**" if model == name else model
        lines.append(f"| {label} | {entry.get('kind', '')} | {_number(entry.get('auc'))} | "
                     f"{_number(entry.get('logloss'))} | {impr} | {entry.get('n', '')} |")
    return lines


def dataset_lines(record) -> list:
    dataset, data = record.dataset, record.config.data
    samples = dataset.samples
    split = f"- split: by global time, {':'.join(f'{part:g}' for part in data.split_ratio)} train/valid/test"
    if samples:
        split += f" ({', '.join(f'{name} {count}' for name, count in samples.items())} samples)"
    spec = dataset.spec
    rule = f"rating {'>=' if spec['label_inclusive'] else '>'} {spec['label_threshold']:g}"
    lines = [f"- dataset: `{dataset.name}` ({dataset.users} users, {dataset.items} items, {dataset.interactions} "
             f"interactions; label: {rule})",
             f"- processing: {data.core}-core filter, at least {data.min_history} earlier interactions per sample",
             split]
    time_range = dataset.time_range or {}
    if "test" in time_range:
        lines.append(f"- test period: {time_range['test'].get('first_utc')} to {time_range['test'].get('last_utc')}")
    lines.append(f"- dataset fingerprint: `{record.lineage.dataset_fingerprint[:16]}`")
    return lines


def _history_text(record, which: str, encoder: str) -> str:
    """``encoder``: the base model as the card names it (the run's LLM encoded the items; a local path would mean
    nothing to a reader)."""
    retrieval = record.config.retrieval
    mode = record.model.short_history if which == "short" else record.model.long_history
    text = f"{mode}, K {retrieval.k_short if which == 'short' else retrieval.k_long}"
    if mode == "semantic" and record.retriever is not None:
        text += (f"; cosine of item vectors ({record.retriever.vector_dim}-d, PCA of {retrieval.pooling}-pooled "
                 f"`{encoder}` states)")
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
