#!/usr/bin/env bash
# One offline GPU session in one call (issue 23): the GPU tests and the throughput benchmark against TRL,
# every step under its own timeout, within 8 minutes on one H100/H200. Installs nothing from a network.
#
#   bash bench/gpu_check.sh [WHEELS_DIR] [OUT_DIR]
#
# WHEELS_DIR (default .gpu/whl): wheels for what an offline GPU image may lack — trl and datasets and
# their missing dependencies — made on a networked machine with
#   pip download --no-deps -d .gpu/whl trl==1.16.0 datasets==4.8.5 dill multiprocess xxhash pyarrow
# They go into a temporary --target folder on PYTHONPATH; the image's torch, transformers and peft stay.
# OUT_DIR (default bench/results/gpu-$(date +%F)): the benchmark JSONs and the logs of each step.
# GPU_CHECK_DRY=1 runs the same steps on the CPU with the tiny model shape (seconds): the script's own test.
set -u
SHAPE="" BIG_BUDGET=32768
[ "${GPU_CHECK_DRY:-0}" = 1 ] && SHAPE="--model-shape tiny --device cpu" BIG_BUDGET=2048
WHEELS=${1:-.gpu/whl}
OUT=${2:-bench/results/gpu-$(date +%F)}
mkdir -p "$OUT"
SITE=$(mktemp -d)
if ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl || exit 3
fi
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
T0=$(date +%s)
step() {  # step NAME SECONDS COMMAND…: run under a timeout, log to $OUT/NAME.log, print the exit code and elapsed time
  local name=$1 limit=$2; shift 2
  echo "== $name (≤ ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$? elapsed=$(( $(date +%s) - T0 )) s"
  grep -E '^\{"(trl|hsrm_)|^scoring|passed|failed' "$OUT/$name.log" | cut -c1-400
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2> /dev/null || echo "no nvidia-smi"
python3 -c "import torch, transformers, trl, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__)
from hsrm.packing import _torch_varlen_attn; print('torch varlen kernel:', _torch_varlen_attn() is not None)" || exit 4
# 1. the GPU tests, flex excluded (its cold compile takes minutes: docs/speed.md)
step gpu_tests 150 python3 -m pytest -q -m gpu tests/test_packing.py -k "not flex" -p no:cacheprovider
# 2. the headline: TRL vs hsrm packed hsrm_varlen, checkpointing on in both, and scoring
step trl_vs_hsrm_varlen 200 python3 bench/throughput.py $SHAPE --steps 20 --warmup 4 --attn hsrm_varlen --output "$OUT/trl_vs_hsrm_varlen.json"
# 3. a larger token budget (the first lever), hsrm only
step hsrm_varlen_32k 80 python3 bench/throughput.py $SHAPE --steps 12 --warmup 3 --attn hsrm_varlen --max-tokens $BIG_BUDGET --skip-trl \
  --score-sequences 64 --score-repeats 1 --output "$OUT/hsrm_varlen_32k.json"
# 4. the stretch: checkpointing off, any memory
step hsrm_varlen_no_checkpointing 80 python3 bench/throughput.py $SHAPE --steps 20 --warmup 4 --attn hsrm_varlen --hsrm-checkpointing off \
  --skip-trl --score-sequences 64 --score-repeats 1 --output "$OUT/hsrm_varlen_no_checkpointing.json"
echo "total $(( $(date +%s) - T0 )) s; results in $OUT"
