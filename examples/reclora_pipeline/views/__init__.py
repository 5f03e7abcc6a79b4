"""What each model reads of a sample, built the same way for training, evaluation and serving.

    view = SampleView.from_dataset(dataset, sample_ids, long=retrieval, short=retrieval)   # or from requests
    features = ctr_features(view, vocabulary)          # the CRM's input (CTRFeatures)
    records = text_records(view)                       # the LLM's input: one TextRecord per sample
    token_ids = prompt_token_ids(spec, records, formatter, max_tokens)
"""

from ..lazy import lazy_exports


_EXPORTS = {
    "FieldVocabulary": ".ctr", "build_ctr_features": ".ctr", "ctr_features": ".ctr",
    "PROMPT_STYLES": ".prompts", "PROMPT_TEMPLATES": ".prompts", "PromptFormatter": ".prompts",
    "build_prompt": ".prompts", "prompt_token_ids": ".prompts",
    "SampleView": ".samples",
    "TextRecord": ".text", "item_description": ".text", "item_texts": ".text", "text_records": ".text",
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)
