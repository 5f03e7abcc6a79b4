"""Model cards and Hub uploads for RecLoRA adapters.

PEFT writes an adapter's ``README.md`` in ``PeftModel.save_pretrained`` through
``PeftModel.create_or_update_model_card``. That card knows nothing about the gate's input, so a RecLoRA section is added
to it: the CRM width a caller must provide, the bank shape, and a usage snippet that imports this package (without the
import, PEFT cannot resolve the ``RECLORA`` type of the saved config).

``PeftModel.push_to_hub`` is transformers' generic ``PushToHubMixin.push_to_hub``, which saves the adapter and then
replaces the ``README.md`` with a generic transformers card, dropping the PEFT card. For models holding a RecLoRA adapter
the upload is therefore done here: ``save_pretrained`` into a temporary folder (PEFT's own serialisation and card), then
one ``huggingface_hub`` commit of that folder. Models without RecLoRA adapters keep PEFT's behaviour untouched.
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Optional

from peft import PeftModel

SECTION_MARKER = "<!-- reclora-adapter-card -->"


def _reclora_configs(peft_model) -> dict:
    from .config import RecLoraConfig

    return {name: cfg for name, cfg in getattr(peft_model, "peft_config", {}).items() if isinstance(cfg, RecLoraConfig)}


def reclora_card_section(peft_model, repo_id: Optional[str] = None) -> str:
    """Markdown describing the RecLoRA adapters of ``peft_model`` (settings table and usage snippet)."""
    configs = _reclora_configs(peft_model)
    base = next(iter(configs.values())).base_model_name_or_path or "<base model>"
    source = repo_id or "<this repository or folder>"
    rows = [
        "| adapter | meta-LoRAs (N_m) | rank r | lora_alpha | crm_dim | gate hidden | temperature | gate | mixing | targets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cfg in configs.items():
        targets = cfg.target_modules if isinstance(cfg.target_modules, str) else ", ".join(sorted(cfg.target_modules or []))
        rows.append(
            f"| {name} | {cfg.num_meta_loras} | {cfg.r} | {cfg.lora_alpha} | {cfg.crm_dim} | {cfg.gate_hidden_dim} | "
            f"{cfg.temperature} | {cfg.gate_sharing} | {cfg.mixing} | {targets} |"
        )
    crm_dim = next(iter(configs.values())).crm_dim
    return "\n".join(
        [
            SECTION_MARKER,
            "## RecLoRA adapter",
            "",
            "A personalized low-rank adapter for recommendation (RecLoRA): each adapted layer holds a bank of meta-LoRA "
            "pairs, mixed per sample by a gate over the user representation of a conventional recommender (CRM). "
            f"Every call needs that representation as `crm_embeds`, a float tensor of shape (batch, {crm_dim}).",
            "",
            f"Base model: `{base}`",
            "",
            *rows,
            "",
            "### Usage",
            "",
            "```python",
            "import torch",
            "import peft_reclora  # registers the RECLORA type with PEFT (pip install peft-reclora)",
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{source}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{base}")',
            'inputs = tokenizer(["...prompt..."], return_tensors="pt")',
            f"crm_embeds = torch.randn(1, {crm_dim})  # the CRM's user representation R_c",
            "logits = model(**inputs, crm_embeds=crm_embeds).logits",
            "```",
            "",
        ]
    )


def _card_with_reclora_section(original):
    @functools.wraps(original)
    def create_or_update_model_card(self, output_dir: str):
        original(self, output_dir)
        if not _reclora_configs(self):
            return
        from huggingface_hub import ModelCard

        from .model import MODEL_TAGS

        path = os.path.join(output_dir, "README.md")
        card = ModelCard.load(path)
        card.data["library_name"] = "peft"
        card.data["tags"] = sorted(set(card.data.get("tags") or []) | set(MODEL_TAGS) | {"peft"})
        section = reclora_card_section(self)
        text = card.text
        if SECTION_MARKER in text:
            text = text[: text.index(SECTION_MARKER)].rstrip() + "\n"
        card.text = text.rstrip() + "\n\n" + section
        card.save(path)

    create_or_update_model_card._reclora_wrapped = True
    return create_or_update_model_card


def _push_with_peft_card(original):
    @functools.wraps(original)
    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: Optional[str] = None,
        commit_description: Optional[str] = None,
        private: Optional[bool] = None,
        token=None,
        revision: Optional[str] = None,
        create_pr: bool = False,
        tags: Optional[list[str]] = None,
        **kwargs,
    ):
        if not _reclora_configs(self):
            return original(
                self,
                repo_id,
                commit_message=commit_message,
                commit_description=commit_description,
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
                tags=tags,
                **kwargs,
            )
        from huggingface_hub import HfApi, ModelCard

        api = HfApi()
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        if revision is not None:
            api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            readme = os.path.join(folder, "README.md")
            card = ModelCard.load(readme)
            if tags:
                card.data["tags"] = sorted(set(card.data.get("tags") or []) | set(tags))
            card.text = card.text.replace("<this repository or folder>", repo_id)
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

    push_to_hub._reclora_wrapped = True
    return push_to_hub


def install_hub_hooks() -> None:
    """Wrap PeftModel's card writer and uploader once (idempotent across re-imports)."""
    if not getattr(PeftModel.create_or_update_model_card, "_reclora_wrapped", False):
        PeftModel.create_or_update_model_card = _card_with_reclora_section(PeftModel.create_or_update_model_card)
    if not getattr(PeftModel.push_to_hub, "_reclora_wrapped", False):
        PeftModel.push_to_hub = _push_with_peft_card(PeftModel.push_to_hub)
