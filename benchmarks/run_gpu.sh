#!/usr/bin/env bash
# Run the GPU benchmarks (--preset h100: Llama-7B shapes, bf16) from a checkout of this repository.
#
#   bash benchmarks/run_gpu.sh            # correctness checks, then bench_layer, _e2e, _train, _generate, _serving
#   bash benchmarks/run_gpu.sh layer      # one of: check, layer, e2e, train, generate, serving (several may be given)
#
# Needs torch with CUDA, transformers, peft 0.21 and triton; nothing else (pytest is used for the checks when it is
# installed, the benchmarks' own float64 checks run either way). Results: benchmarks/results/<name>-h100-<gpu>-<date>.json
# plus a .log of the printed table next to it; when $OUT is set (a directory), the new files are copied there too.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
results=benchmarks/results
mkdir -p "$results"
stamp=$(date -u +%Y-%m-%d)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(check layer e2e train generate serving)

python - <<'PY'
import torch, triton, transformers, peft
assert torch.cuda.is_available(), "no CUDA device visible"
print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} (CUDA {torch.version.cuda}) | triton {triton.__version__}"
      f" | transformers {transformers.__version__} | peft {peft.__version__}")
PY

marker=$(mktemp)  # files newer than this are this run's results

for step in "${steps[@]}"; do
  case "$step" in
    check)
      if python -c "import pytest" 2>/dev/null; then
        python -m pytest -q tests/test_ops.py -k "cuda or h100" 2>&1 | tee "$results/check-h100-$stamp.log"
      else
        echo "pytest not installed: skipping tests/test_ops.py; bench_layer still checks both backends against float64"
      fi
      ;;
    layer|e2e|train|generate|serving)
      python "benchmarks/bench_$step.py" --preset h100 2>&1 | tee "$results/bench_$step-h100-$stamp.log"
      ;;
    *)
      echo "unknown step '$step' (choose from: check layer e2e train generate serving)" >&2
      exit 2
      ;;
  esac
done

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  find "$results" -type f -newer "$marker" -exec cp {} "$OUT"/ \;
  echo "copied new results to $OUT"
fi
