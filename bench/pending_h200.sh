#!/usr/bin/env bash
# The measurements issues 11 and 13 wait for (at most PENDING_BUDGET_S, default 570 s, on an H200), from the repository root:
#   PYTHONPATH=src bash bench/pending_h200.sh       (writes under $OUT, or ./pending_out)
# What changed since the last GPU runs (plans_h200_run3/run4): screened step times corrected per
# shape (LLaMA-1B at full checkpointing's memory now plans `full ckpt x7, boundaries to host +
# lean x9 + chunked loss x4`, predicted 172.0 ms against Hugging Face's measured 189.1), a
# checkpointed region priced per operator (the Qwen2 shape's plans turned to lean blocks), plans
# that recompute convolutions kept 10% below the budget (ResNet-50 measured 5-10% over).
# Pieces, each under its own time limit, writing as they go:
#   1. plans/plans_eager.json (<= 330 s): bench/plans.py's four budgets and the Hugging Face
#      alternatives for LLaMA-1B (issue 11's >= 10% at full checkpointing's memory; issue 13's
#      +-5 points), ResNet-50 (reserved within the budget with the 10% margin), the encoder and
#      the Qwen2 shape, every plan made before anything is measured;
#   2. conv_probe/conv_probe.json (<= 130 s): the held-out grid of convolution calls;
#   3. reserved/ (<= 60 s): the RoBERTa fp16 snapshot whose reserved peak is mispredicted;
#   4. plan_snapshots/ (what is left): ResNet-50's planned steps' snapshots.
# The device returns at most 8 files, so everything is written to a scratch folder and packed into
# $OUT/pending.tar.gz after each piece (a piece cut short still leaves the earlier ones packed).
set -u
dest="${OUT:-pending_out}"
out="${PENDING_SCRATCH:-/tmp/pending_scratch}"
budget="${PENDING_BUDGET_S:-570}"
pack() { tar czf "$dest/pending.tar.gz.part" -C "$out" . && mv "$dest/pending.tar.gz.part" "$dest/pending.tar.gz"; }
mkdir -p "$dest"
mkdir -p "$out/plans" "$out/conv_probe" "$out/reserved" "$out/plan_snapshots"
timeout 330 python bench/plans.py --out "$out/plans" --parts eager --plans-first \
    --models hf-llama-1b,tv-resnet50,transformer-encoder,qwen2-shaped > "$out/plans_log.txt" 2>&1
echo "exit $?" >> "$out/plans_log.txt"
pack
timeout 130 python bench/conv_probe.py --grid held-out --step-cases "" --budget-s 110 \
    --out "$out/conv_probe" > "$out/conv_probe_log.txt" 2>&1
echo "exit $?" >> "$out/conv_probe_log.txt"
pack
timeout 60 python bench/reserved_snapshots.py --cases roberta-cls-fp16-mixed \
    --out "$out/reserved" > "$out/reserved_log.txt" 2>&1
echo "exit $?" >> "$out/reserved_log.txt"
pack
left=$((budget - SECONDS))
if [ "$left" -gt 20 ]; then
    timeout "$left" python bench/plan_snapshots.py --out "$out/plan_snapshots" \
        > "$out/plan_snapshots_log.txt" 2>&1
    echo "exit $?" >> "$out/plan_snapshots_log.txt"
fi
pack
