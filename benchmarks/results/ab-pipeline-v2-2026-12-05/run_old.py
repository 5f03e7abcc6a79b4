import sys
import time

from reclora_pipeline.pipeline import PipelineConfig, run_pipeline


out = sys.argv[1]
t = time.perf_counter()
run_pipeline(PipelineConfig.from_preset("demo", out=out, retrieval="recent", few_shot=32, test_samples=48,
                                        crm_epochs=1, progress=False))
print("PIPELINE_SECONDS", time.perf_counter() - t)
