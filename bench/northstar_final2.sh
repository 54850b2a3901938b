#!/usr/bin/env bash
# Issue 11's second GPU run (at most 185 s on an H200), from the repository root:
#   PYTHONPATH=src bash bench/northstar_final2.sh       (writes under $OUT, or ./northstar_out)
# What changed since run 2 (bench/northstar_final.sh at 6091989): the host worker takes the
# ready gradients first (run 2: forwards waited 0.63 s per step for the host), gradient hooks
# no longer keep dropped models alive, the GPU test of the offloaded update compares one step.
# Pieces, each under its own time limit, writing as they go:
#   1. gpu_tests.txt (<= 25 s): the gpu-marked offload tests;
#   2. northstar.json (<= 110 s): memfit.plan's plans for Llama-3.2-3B's shape at 24 GiB,
#      batch 8 and 16, applied and measured in one process (the host's Adam time per step too);
#   3. optimizer_state/optimizer_state.json (what is left of 185 s, ~50 s): bench/optimizer_state.py's
#      step rows that measured 11-20 GB over their prediction in run 1, after 'adamw + in
#      backward' (whose model leaked); torchao needed for the 8-bit rows.
set -u
out="${OUT:-northstar_out}"
mkdir -p "$out/optimizer_state"
if [ -d tests ]; then
    timeout 25 python -m pytest -q -m gpu -p no:cacheprovider tests/step/test_pinned.py \
        tests/apply/test_offload_optimizer.py > "$out/gpu_tests.txt" 2>&1
    echo "exit $?" >> "$out/gpu_tests.txt"
else
    echo "no tests/ in this copy: the gpu tests were not run" > "$out/gpu_tests.txt"
fi
timeout 110 python bench/northstar.py --out "$out" --part plans --plan-batches 8,16 \
    --allows default --deadline-s 105 "$@" > "$out/plans_log.txt" 2>&1
echo "exit $?" >> "$out/plans_log.txt"
left=$((185 - SECONDS))
timeout "$left" python bench/optimizer_state.py --out "$out/optimizer_state" --parts steps \
    --plans "adamw + in backward,adamw 8bit,pure bf16 + in backward,pure bf16,adamw 8bit + in backward,pure bf16 + 8bit + in backward" \
    "$@" > "$out/optimizer_state_log.txt" 2>&1
echo "exit $?" >> "$out/optimizer_state_log.txt"
