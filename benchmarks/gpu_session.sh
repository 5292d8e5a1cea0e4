#!/usr/bin/env bash
# One GPU session of the benchmarks on a machine without the network, within a fixed time.
#
#     bash benchmarks/gpu_prepare.sh [REV]                      # here: fills .gpu/ (git-ignored)
#     bash .gpu/src/benchmarks/gpu_session.sh [STAGE ...]       # there, from the repository root
#
# It runs the snapshot in .gpu/src (never the working tree beside it), over the machine's own
# python3 and CUDA torch: it installs the carried wheels with --no-deps into /tmp/mm/site (mmalign's
# side, on PYTHONPATH) and /tmp/peer/site (TRL 0.23.1 for the ddpo peer, behind the wrapper
# /tmp/peer/python, given to the harness as MMALIGN_BENCH_DDPO_PYTHON), checks the imports, then
# runs the stages in order, each one `python -m benchmarks.run --gpu` under its own time limit and
# every child of it under --child-timeout, so that a hang costs one stage, not the session:
#
#   ddpo     ddpo: mmalign vs TRL 0.23.1 DDPOTrainer, fp32 pair then bf16 pair (5 timed steps)
#   dpo      text_long, vlm, diffusion, then text_variable: mmalign bf16 vs TRL 1.16 default /
#            the diffusers DPO step in bf16 (9 timed steps)
#   online   grpo, vlm_grpo: mmalign bf16 vs TRL GRPOTrainer default (5 timed steps)
#   fp32     text_long, vlm, diffusion in fp32 (mmalign vs trl_fp32 / diffusers_dpo_fp32)
#   rloo     rloo: mmalign bf16 vs TRL RLOOTrainer default
#
# Default stages: ddpo dpo online fp32. The whole script stops starting work after BUDGET seconds
# (default 420) and gives each stage at most its own cap; a stage with too little time left is
# skipped. Results land in $OUT (default /tmp/gpu-out) as they come: session.log (all the output),
# one results JSON per stage (<stage>.json, written after every child, so a cut-off stage keeps
# what it finished) and child-logs.tgz (every child's log). A second call on a machine that is
# still warm reuses the installed wheels (/tmp/mm/.done, /tmp/peer/.done).
#
# Knobs (environment): OUT, BUDGET, WORK (models, data, logs), PYTHON (default: python3 on PATH),
# GPU_DIR (default: the .gpu folder holding this copy). For a dry run on a machine without a GPU:
# CPU_ONLY=1 (no --gpu), QUICK=1 (--quick --steps 1), TIME_SCALE=N (every time limit times N),
# VARIANTS=a,b,... (every stage runs these variants instead of its own).
set -uo pipefail

GPU_DIR=${GPU_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}  # .gpu: src/benchmarks/gpu_session.sh
SRC=$GPU_DIR/src
OUT=${OUT:-/tmp/gpu-out}
BUDGET=${BUDGET:-420}
WORK=${WORK:-/tmp/bench-work}
PY=${PYTHON:-$(command -v python3)}  # not resolved through links: a venv's python stays the venv's
SCALE=${TIME_SCALE:-1}
EXTRA=()
[ "${CPU_ONLY:-0}" = 1 ] || EXTRA+=(--gpu)
[ "${QUICK:-0}" = 1 ] && EXTRA+=(--quick --steps 1)
[ -n "${VARIANTS:-}" ] && EXTRA+=(--variants "$VARIANTS")
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(ddpo dpo online fp32)
START=$(date +%s)
if [ ! -d "$GPU_DIR/whl/mm" ] || [ ! -f "$SRC/benchmarks/run.py" ]; then
  echo "gpu_session: no wheels or snapshot under $GPU_DIR (run .gpu/src/benchmarks/gpu_session.sh, after benchmarks/gpu_prepare.sh)" >&2
  exit 2
fi
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/session.log") 2>&1
TEE=$!
# No network there: the hub stays offline, and transformers 5.25's Hub kernels (on by default, they
# need the kernels package and downloads) stay off, for mmalign and TRL 1.16 alike.
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false USE_HUB_KERNELS=NO

elapsed() { echo $(($(date +%s) - START)); }
say() { echo "[gpu_session $(elapsed)s] $*"; }

install() {  # NAME: the wheels of .gpu/whl/NAME into /tmp/NAME/site, once per machine
  local dest=/tmp/$1
  [ -e "$dest/.done" ] && { say "$1 wheels already installed in $dest/site"; return 0; }
  rm -rf "$dest" && mkdir -p "$dest" || return 1
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$dest/site" \
    "$GPU_DIR"/whl/"$1"/*.whl && touch "$dest/.done"
}

say "snapshot $(head -c 12 "$SRC/REVISION" 2>/dev/null); stages: ${STAGES[*]}; budget ${BUDGET}s; python $PY"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -3
echo "cpus: $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
install mm || say "installing mmalign's wheels FAILED"
install peer || say "installing the peer's wheels FAILED"
cat >/tmp/peer/python <<EOF
#!/bin/sh
# TRL 0.23.1's environment: the carried wheels over the machine's python and torch (not mmalign's)
PYTHONPATH=/tmp/peer/site exec "$PY" "\$@"
EOF
chmod +x /tmp/peer/python
export MMALIGN_BENCH_DDPO_PYTHON=/tmp/peer/python
say "installed"

# Both environments' imports, side by side (also warms the page cache for the children)
cd "$SRC" || exit 1
PYTHONPATH=/tmp/mm/site "$PY" - >"$WORK/check-mm.txt" 2>&1 <<'EOF' &
import importlib.metadata as md, torch
from mmalign.plugins import registry
import trl, datasets, diffusers, transformers, peft, accelerate  # noqa: F401
print("mmalign side:", {n: md.version(n) for n in ("torch", "transformers", "diffusers", "trl", "datasets", "peft",
                                                  "accelerate", "huggingface_hub", "tokenizers", "pyarrow", "numpy")})
print("  cuda", torch.cuda.is_available(), torch.version.cuda, "| rewards plugins:", registry().names("rewards"))
EOF
CHECK_MM=$!
/tmp/peer/python - >"$WORK/check-peer.txt" 2>&1 <<'EOF' &
import importlib.metadata as md, torch
from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline  # noqa: F401
print("peer side:", {n: md.version(n) for n in ("torch", "transformers", "diffusers", "trl", "peft", "accelerate",
                                               "huggingface_hub", "tokenizers")}, "cuda", torch.cuda.is_available())
EOF
CHECK_PEER=$!
wait "$CHECK_MM" "$CHECK_PEER"  # not a bare wait: that would wait for the tee of session.log too
tail -n 8 "$WORK/check-mm.txt" "$WORK/check-peer.txt"
say "imports checked"

keep_logs() {  # every child's log so far, into one file that comes back
  (cd "$WORK" && find . -name '*.log' -o -name 'check-*.txt' | tar -czf "$OUT/child-logs.tgz" -T -) 2>/dev/null
}

measured_peak() {  # an earlier stage's results JSON with the matmul peak in it (one child less)
  local f
  for f in "$OUT"/*.json; do
    [ -f "$f" ] && "$PY" -c 'import json, sys; sys.exit("fp32" not in json.load(open(sys.argv[1]))["matmul_peak_flops"])' \
      "$f" 2>/dev/null && { echo "$f"; return 0; }
  done
  return 0
}

stage() {  # NAME CAP_S MIN_S CHILD_S ARGS...: one harness run, under min(CAP_S, what is left of BUDGET)
  local name=$1 cap=$(($2 * SCALE)) min=$(($3 * SCALE)) child=$(($4 * SCALE))
  shift 4
  local left=$((BUDGET - $(elapsed)))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt "$min" ]; then
    say "SKIP stage $name: ${left}s left, it needs ${min}s"
    return 0
  fi
  local peak=() from
  from=$(measured_peak)
  [ -n "$from" ] && peak=(--peak-from "$from")
  say "stage $name (limit ${limit}s): $* ${peak[*]}"
  PYTHONPATH=/tmp/mm/site timeout -k 10 "$limit" "$PY" -m benchmarks.run --workdir "$WORK/$name" \
    --out "$OUT/$name.json" --child-timeout "$child" "${peak[@]}" "$@" "${EXTRA[@]}"
  local code=$?
  say "stage $name ended: exit $code$([ $code -eq 124 ] && echo ' (time limit)')"
  rm -f "$OUT/$name.json.tmp"
  keep_logs
}

for s in "${STAGES[@]}"; do
  case $s in  #              cap  min child
    ddpo) stage ddpo         170  70  110 --only ddpo --variants mmalign_fp32,trl_fp32,mmalign_bf16,trl_bf16 --steps 5 ;;
    dpo) stage dpo           170  50   80 --only text_long,vlm,diffusion,text_variable \
                                          --variants mmalign_bf16,trl_default,diffusers_dpo_bf16 --steps 9 ;;
    online) stage online     120  50   80 --only grpo,vlm_grpo --variants mmalign_bf16,trl_default --steps 5 ;;
    fp32) stage fp32         120  40   80 --only text_long,vlm,diffusion \
                                          --variants mmalign_fp32,trl_fp32,diffusers_dpo_fp32 --steps 9 ;;
    rloo) stage rloo          90  40   80 --only rloo --variants mmalign_bf16,trl_default --steps 5 ;;
    *) say "unknown stage $s (ddpo, dpo, online, fp32, rloo)" ;;
  esac
done
keep_logs
say "done; in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exec >&- 2>&-  # let tee write the last lines of session.log before the script returns
wait "$TEE" 2>/dev/null
