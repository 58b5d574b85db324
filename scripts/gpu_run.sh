# The device call for a lent GPU, prepared: `run` with carry [".gpu"] and the command
#     bash scripts/gpu_run.sh
# after `scripts/train_gpu.py pack --init DIR` filled .gpu here (its docstring). One run of the
# Whisper-front-end CTC model (asr/whisper_ctc.py) takes the whole GPU: the loader only reads
# cached clips, and the log-mel, the augmentation (speed, gain, noise: asr/device_augment.py) and
# SpecAugment run on the GPU, batched, on large batches; bf16 autocast, with non-finite steps
# skipped by the loop (FP32=1 turns it off). The log-mel itself stays fp32.
# Plan the 15 minutes as two calls: the first fine-tunes the pack's start model (.gpu/init); then
# `train_gpu.py unpack --run a` here, export that model into .gpu/init, and the second call
# continues from it at its own rate (LR=...).
# nvidia-smi samples the GPU's utilization every 2 s; the mean is the last line printed, and the
# samples come back in meta.tgz (util.csv).
# Knobs: MIN (minutes of training), BS, LT (loader threads), LR, HEAD_LR, INIT, PACK, WORK (scratch
# folder), PYTHON, FP32; OUT is set by the device tool. tests/test_train_gpu.py runs it on the CPU.
set -u
export PYTHONUNBUFFERED=1
PACK=${PACK:-.gpu}; WORK=${WORK:-/tmp}; PYTHON=${PYTHON:-python3}; INIT=${INIT:-$PACK/init}
MIN=${MIN:-5}; BS=${BS:-96}; LT=${LT:-6}; LR=${LR:-3e-4}; HEAD_LR=${HEAD_LR:-1e-3}
if [ -d "$PACK/wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$PACK"/wheels/*.whl || exit 1
    export PYTHONPATH="$WORK/site:."
fi
nvidia-smi -L 2>/dev/null
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 2 > "$WORK/util.csv" 2>/dev/null &
SMI=$!
PRECISION=""; [ "${FP32:-0}" = 1 ] && PRECISION="--fp32"
$PYTHON scripts/train_gpu.py train --pack "$PACK" --out "$WORK/oa" --run-dir "$WORK/ra-$LR" --init "$INIT" \
    --batch-size "$BS" --steps 100000 --minutes "$MIN" --loader-threads "$LT" --prefetch 8 \
    --cache-audio-mb 20000 --checkpoint-every 1000 --lr "$LR" --head-lr "$HEAD_LR" --warmup-steps 100 \
    --curriculum-steps 0 --max-clip-s 10 --augment 0.8 --augment-on-device --length-buckets 8 \
    --mask-time-prob 0.05 --mask-feature-prob 0.05 $PRECISION > "$WORK/a.log" 2>&1
status=$?
kill "$SMI" 2>/dev/null
mkdir -p "$OUT/a"
cp "$WORK/oa"/model/*.safetensors "$OUT/a/"
(cd "$WORK" && tar czf "$OUT/meta.tgz" --exclude='*.safetensors' oa a.log util.csv)
grep -E "^step|stopped|Error" "$WORK/a.log" | tail -8
awk -F', *' '$1 ~ /^[0-9]+$/ {n++; s+=$1} END {if (n) printf "GPU busy: mean %.1f%% over %d samples\n", s/n, n; else print "GPU busy: no samples (no nvidia-smi)"}' "$WORK/util.csv"
exit $status
