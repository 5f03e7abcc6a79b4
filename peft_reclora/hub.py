"""Model cards and Hub uploads for RecLoRA adapters, through extension points this package owns (PEFT is not changed).

- The card: ``PeftModel.save_pretrained`` writes PEFT's ``README.md`` and then saves every adapter's config through the
  config's own ``save_pretrained``. ``RecLoraConfig.save_pretrained`` calls ``add_adapter_to_card``, which adds a
  RecLoRA section to that card (the CRM width a caller must provide, the bank shape, and a usage snippet that imports
  this package: without the import PEFT cannot resolve the ``RECLORA`` type of the saved config), one table row per
  adapter.
- The upload: ``PeftModel.push_to_hub`` is transformers' generic ``PushToHubMixin.push_to_hub``; it saves the adapter
  and then replaces ``README.md`` with a generic transformers card, for every PEFT method. ``push_to_hub(model, ...)``
  here takes the same arguments (and ``save_pretrained``'s), saves with PEFT's own ``save_pretrained`` so the PEFT
  card and its RecLoRA section are kept, and uploads that folder in one commit.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Union

from huggingface_hub import HfApi, ModelCard

from .config import RecLoraConfig
from .tags import MODEL_TAGS


SECTION_MARKER = "<!-- reclora-adapter-card -->"
SECTION_END = "<!-- /reclora-adapter-card -->"
SOURCE_PLACEHOLDER = "<this repository or folder>"
TABLE_HEADER = (
    (
        "| adapter | meta-LoRAs (N_m) | rank r | lora_alpha | crm_dim "
        "| gate hidden | temperature | gate | mixing | targets |"
    ),
    "|---|---|---|---|---|---|---|---|---|---|",
)
INSTALL_HINT = "install peft_reclora from its repository, e.g. `pip install -e <clone of peft_reclora>`"


def _reclora_configs(peft_model) -> dict:
    return {
        name: cfg for name, cfg in getattr(peft_model, "peft_config", {}).items() if isinstance(cfg, RecLoraConfig)
    }


def _row(adapter_name: str, cfg: RecLoraConfig) -> str:
    targets = (
        cfg.target_modules if isinstance(cfg.target_modules, str) else ", ".join(sorted(cfg.target_modules or []))
    )
    return (
        f"| {adapter_name} | {cfg.num_meta_loras} | {cfg.r} | {cfg.lora_alpha} | {cfg.crm_dim} "
        f"| {cfg.gate_hidden_dim} | {cfg.temperature} | {cfg.gate_sharing} | {cfg.mixing} | {targets} |"
    )


def _section(rows: list[str], cfg: RecLoraConfig, source: Optional[str] = None) -> str:
    base = cfg.base_model_name_or_path or "<base model>"
    return "\n".join(
        [
            SECTION_MARKER,
            "## RecLoRA adapter",
            "",
            "A personalized low-rank adapter for recommendation (RecLoRA): each adapted layer holds a bank of "
            "meta-LoRA pairs, mixed per sample by a gate over the user representation of a conventional recommender "
            "(CRM). Every call needs that representation as `crm_embeds`, a float tensor of shape "
            f"(batch, {cfg.crm_dim}).",
            "",
            f"Base model: `{base}`",
            "",
            *TABLE_HEADER,
            *rows,
            "",
            "### Usage",
            "",
            f"Loading needs the `peft_reclora` package ({INSTALL_HINT}) and `import peft_reclora` before PEFT reads "
            "the adapter: PEFT has no plug-in discovery, and without the import it fails with "
            "`KeyError: 'RECLORA'`. Load it through PEFT (`AutoPeftModelForCausalLM`, `PeftModel.from_pretrained`, "
            "`PeftModel.load_adapter`); transformers' `model.load_adapter` refuses RecLoRA (PEFT's "
            "`inject_adapter_in_model` does not take tuners with shared state).",
            "",
            "```python",
            "import torch",
            "import peft_reclora  # required: registers the RECLORA adapter type with PEFT",
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{source or SOURCE_PLACEHOLDER}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{base}")',
            'inputs = tokenizer(["...prompt..."], return_tensors="pt")',
            f"crm_embeds = torch.randn(1, {cfg.crm_dim})  # the CRM's user representation R_c",
            "logits = model(**inputs, crm_embeds=crm_embeds).logits",
            "```",
            SECTION_END,
            "",
        ]
    )


def reclora_card_section(peft_model, repo_id: Optional[str] = None) -> str:
    """Markdown describing the RecLoRA adapters of ``peft_model`` (settings table and usage snippet)."""
    configs = _reclora_configs(peft_model)
    if not configs:
        raise ValueError("The model holds no RecLoRA adapter")
    rows = [_row(name, cfg) for name, cfg in configs.items()]
    return _section(rows, next(iter(configs.values())), repo_id)


def _card_for(save_directory) -> Optional[tuple[str, str]]:
    """(README path, adapter name) of the PEFT card an adapter config saved into ``save_directory`` belongs to.

    PEFT saves the ``default`` adapter next to the card and any other adapter into a sub-folder named after it. Only a
    card PEFT wrote (``library_name: peft``) is touched, so saving a bare config never edits an unrelated README.
    """
    folder = os.path.abspath(os.fspath(save_directory))
    for readme, adapter_name in (
        (os.path.join(folder, "README.md"), "default"),
        (os.path.join(os.path.dirname(folder), "README.md"), os.path.basename(folder)),
    ):
        if os.path.isfile(readme):
            card = ModelCard.load(readme)
            if card.data.get("library_name") == "peft":
                return readme, adapter_name
    return None


def add_adapter_to_card(save_directory, config: RecLoraConfig) -> None:
    """Add (or refresh) ``config``'s row in the RecLoRA section of the PEFT card its adapter is saved with."""
    found = _card_for(save_directory)
    if found is None:
        return
    readme, adapter_name = found
    card = ModelCard.load(readme)
    card.data["library_name"] = "peft"
    card.data["tags"] = sorted(set(card.data.get("tags") or []) | set(MODEL_TAGS) | {"peft"})
    text, row = card.text, _row(adapter_name, config)
    if SECTION_MARKER in text and SECTION_END in text:
        start, end = text.index(SECTION_MARKER), text.index(SECTION_END) + len(SECTION_END)
        lines = text[start:end].splitlines()
        rows = [line for line in lines if line.startswith("| ") and line not in TABLE_HEADER]
        rows = [r for r in rows if r.split("|")[1].strip() != adapter_name] + [row]
        header_end = lines.index(TABLE_HEADER[1])
        kept = [line for line in lines[header_end + 1:] if not (line.startswith("| ") and line not in TABLE_HEADER)]
        section = "\n".join(lines[: header_end + 1] + rows + kept)
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip() + "\n\n" + _section([row], config)
    card.text = text
    card.save(readme)


def push_to_hub(
    model,
    repo_id: str,
    *,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
    private: Optional[bool] = None,
    token: Optional[Union[bool, str]] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    max_shard_size: Union[int, str, None] = "50GB",
    tags: Optional[list[str]] = None,
    safe_serialization: bool = True,
    selected_adapters: Optional[list[str]] = None,
    save_embedding_layers: Union[str, bool] = "auto",
    **save_kwargs,
):
    """Upload a PEFT model holding RecLoRA adapters with its PEFT model card (and RecLoRA section) in one commit.

    Takes every argument of ``PeftModel.push_to_hub`` with the same meaning, plus those of
    ``PeftModel.save_pretrained`` (``safe_serialization``, ``selected_adapters``, ``save_embedding_layers``, ...),
    which are passed to it unchanged.
    Returns the commit info of ``HfApi.upload_folder``.
    """
    if not _reclora_configs(model):
        raise ValueError("peft_reclora.push_to_hub uploads models holding a RecLoRA adapter; use model.push_to_hub")
    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    if revision is not None:
        api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(
            folder,
            safe_serialization=safe_serialization,
            selected_adapters=selected_adapters,
            save_embedding_layers=save_embedding_layers,
            max_shard_size=max_shard_size,
            **save_kwargs,
        )
        readme = os.path.join(folder, "README.md")
        if os.path.isfile(readme):
            card = ModelCard.load(readme)
            if tags:
                card.data["tags"] = sorted(set(card.data.get("tags") or []) | set(tags))
            card.text = card.text.replace(SOURCE_PLACEHOLDER, repo_id)
            card.save(readme)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or "Upload RecLoRA adapter",
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
