"""Serving a run's RecLoRA model: the typed record of a published recommender, requests turned into the pipeline's
views, the recommender itself and its publication on the Hub.

    from reclora_pipeline.serving import RecLoraRecommender

    recommender = RecLoraRecommender.from_run("runs/ml-100k-demo")      # or .from_pretrained("me/reclora-ml100k")
    recommender.score([{"user_id": "196", "item_id": "242", "history": [("302", 4), ("377", 1)]}])
"""

from ..lazy import lazy_exports


_EXPORTS = {
    "PushResult": ".publish", "model_card": ".publish", "push_recommender": ".publish",
    "RecLoraRecommender": ".recommender", "RecommenderParts": ".recommender",
    "RecommenderRecord": ".records",
    "Catalog": ".requests", "Request": ".requests",
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)
