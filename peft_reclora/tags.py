"""The tags that mark a model as carrying RecLoRA: set on the wrapped transformers model while an adapter is attached
(``RecLoraModel``) and written into the PEFT model card (``hub``), so the Hub lists both under the same tags."""

MODEL_TAGS = ["reclora", "recommendation"]
