# The device call for a lent GPU, prepared: `run` with carry [".gpu"] and the command
#     bash scripts/gpu_run.sh
# after `scripts/train_gpu.py pack` filled .gpu here (its docstring). Two runs share the one GPU
# side by side, since these small models leave it mostly idle (docs/benchmarks.md, "The first GPU
# runs"): both fine-tune the bundled model (the Whisper transplant) with its fitted conv stack
# frozen, as its CPU fine-tune did, at two learning rates (LR_A, LR_B). The bundled model is the
# second GPU session's run at 3e-4, which beat 1e-4 there (batch 64, 8 times the CPU's batch of
# 8, whose best rate was 1e-4), so the next call continues at 3e-4 and tries 6e-4 beside it. In
# fp32 (bf16 went NaN there). What comes back stays
# within 8 files: each model's safetensors and one archive of the rest (configs, metrics, logs);
# `train_gpu.py unpack --run a|b` reads them.
# Knobs: MIN (minutes of training each), BS, LT (loader threads each), LOAD_AT (when to read
# the load), LR_A, LR_B, PACK, WORK (scratch folder), PYTHON; OUT is set by the device tool.
# tests/test_train_gpu.py runs it on the CPU.
set -u
export PYTHONUNBUFFERED=1
PACK=${PACK:-.gpu}; WORK=${WORK:-/tmp}; PYTHON=${PYTHON:-python3}
MIN=${MIN:-8}; BS=${BS:-64}; LT=${LT:-7}; LOAD_AT=${LOAD_AT:-120}; LR_A=${LR_A:-3e-4}; LR_B=${LR_B:-6e-4}
if [ -d "$PACK/wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$PACK"/wheels/*.whl || exit 1
    export PYTHONPATH="$WORK/site:."
fi
nvidia-smi -L 2>/dev/null
T="$PYTHON scripts/train_gpu.py train --pack $PACK --batch-size $BS --steps 100000 --minutes $MIN \
   --loader-threads $LT --prefetch 4 --cache-audio-mb 20000 --checkpoint-every 2000 --fp32"
# A run's folders are named by its rate: a second call on a still-warm machine resumes a run at
# the same rate and starts afresh at a new one (a resume cannot change the rate; asr/train.py).
for run in a b; do
    lr=LR_${run^^}
    $T --out "$WORK/o$run-${!lr}" --run-dir "$WORK/r$run-${!lr}" --init data/models/voice-search-small \
       --lr "${!lr}" --warmup-steps 100 --curriculum-steps 0 --max-clip-s 5 --freeze-feature-encoder \
       > "$WORK/$run.log" 2>&1 &
done
(sleep "$LOAD_AT"; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; top -bn1 | head -12) \
   > "$WORK/load.log" 2>&1 &
wait
mkdir -p "$OUT/a" "$OUT/b"
cp "$WORK/oa-$LR_A"/model/*.safetensors "$OUT/a/"; cp "$WORK/ob-$LR_B"/model/*.safetensors "$OUT/b/"
(cd "$WORK" && tar czf "$OUT/meta.tgz" --exclude='*.safetensors' --transform "s,^oa-$LR_A,oa," \
    --transform "s,^ob-$LR_B,ob," "oa-$LR_A" "ob-$LR_B" a.log b.log load.log)
grep -E "^step|stopped|Error" "$WORK/a.log" | tail -6; grep -E "^step|stopped|Error" "$WORK/b.log" | tail -6
