#!/usr/bin/env bash
# The GPU checks in one call, for a lent CUDA machine whose image has torch, onnxruntime and most of the toolkit's
# needs, and no package registry: the rest travel as wheels in .whl/ (see docs/results.md, "On a GPU").
#   bash benchmarks/gpu_run.sh OUTDIR [STEP ...]
# STEPs (default: all, in this order): tests train profile attribution compress pipeline. Their time limits add up
# to more than one device call may take (600 s), so a session picks, e.g. `tests compress` then the rest.
# Runs: the `gpu` tests, the training-loop benchmark on CUDA for each family, attribution GPU against CPU, auto
# choosing on the GPU against a GPU user's one-liners, and the README's pipeline. Each step has its own time
# limit, so a slow one does not take the others' time.
set -u
out=${1:-${OUT:-/tmp/gpu-out}}
shift || true
steps=" ${*:-tests train profile attribution compress pipeline} "
wants() { case "$steps" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, onnxruntime as o, numpy, shap, captum, typer; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'ort', o.__version__, o.get_available_providers(), 'numpy', numpy.__version__, 'cpu threads', torch.get_num_threads())"
if wants tests; then
echo "== gpu tests"
timeout 300 python3 -m pytest -m gpu -q --no-header -p no:randomly -rs tests/test_gpu.py tests/test_explain.py 2>&1 | tee "$out/gpu_tests.log"
fi
if wants train; then
echo "== training loop against a hand loop, CUDA"
for family in mlp cnn lstm; do
  timeout 80 python3 benchmarks/train_overhead.py cuda --family "$family" --epochs 10 --reps 3 2>&1 | tee -a "$out/train_overhead.log"
done
fi
if wants profile; then
echo "== where the toolkit's call spends its time on CUDA (MLP, 10 epochs; cProfile, top 25 by own time)"
timeout 60 python3 - > "$out/train_profile.log" 2>&1 <<'PY'
import cProfile, pstats
from trainers import TrainConfig, train
config = TrainConfig(epochs=10, device="cuda", patience=10**6)
train("digits", "mlp", config, progress=False)   # warm-up
profile = cProfile.Profile()
profile.enable()
train("digits", "mlp", config, progress=False)
profile.disable()
pstats.Stats(profile).sort_stats("tottime").print_stats(25)
PY
head -c 6000 "$out/train_profile.log" | tail -c 4500
fi
if wants attribution; then
echo "== attribution, GPU against CPU"
timeout 150 python3 benchmarks/gpu_attribution.py --rounds 3 --batch-sizes 64 360 --out "$out/gpu_attribution.json" 2>&1 | tee "$out/gpu_attribution.log"
fi
if wants compress; then
echo "== compress on the GPU: auto (--device cuda) against half(), bfloat16, ORT's CUDA provider, torch.compile"
timeout 300 python3 benchmarks/gpu_compress.py --data digits --families mlp cnn --epochs 10 --rounds 7 --compile \
  --out "$out/gpu_compress" 2>&1 | tee "$out/gpu_compress.log"
fi
if wants pipeline && [ "${GPU_RUN_PIPELINE:-1}" = 1 ]; then
echo "== the README's pipeline"
( cd /tmp && timeout 120 python3 -m cli.main pipeline digits --model cnn --out /tmp/gpu-pipeline --json ) > "$out/pipeline.log" 2>&1
echo "pipeline rc $?"; tail -c 1500 "$out/pipeline.log"
fi
