import sys
import time

from reclora_pipeline.config import RunConfig
from reclora_pipeline.pipeline import run_pipeline


out = sys.argv[1]
t = time.perf_counter()
run_pipeline(RunConfig.from_preset("demo", {"out": out, "retrieval.mode": "recent", "tune.few_shot": 32,
                                            "eval.test_samples": 48, "crm.training.epochs": 1, "progress": False}))
print("PIPELINE_SECONDS", time.perf_counter() - t)
