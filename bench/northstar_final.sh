#!/usr/bin/env bash
# Issue 11's final GPU run (about 5 minutes on an H200), from the repository root:
#   PYTHONPATH=src bash bench/northstar_final.sh        (writes under $OUT, or ./northstar_out)
# Each piece writes its own files as it goes and has its own time limit, so a piece that runs
# long loses only itself:
#   1. gpu_tests.txt (40 s): the gpu-marked offload tests (needs tests/ and pyproject.toml in
#      the copy; skipped with a note otherwise);
#   2. northstar.json (195 s): check (both offload techniques against the plain step), then
#      plans: memfit.plan's plans for Llama-3.2-3B's shape at 24 GiB, batch 8 and 16, exact
#      techniques and with pure_bf16 allowed, each applied and measured (a plan identical to
#      one measured already is not measured twice), then the batch-8 plan with 8 host threads;
#   3. frontier/northstar.json (55 s): LLaMA-1B, memfit's plan against HF full checkpointing.
# Logs: *_log.txt beside them.
set -u
out="${OUT:-northstar_out}"
mkdir -p "$out/frontier"
if [ -d tests ]; then
    timeout 40 python -m pytest -q -m gpu -p no:cacheprovider tests/step/test_pinned.py \
        tests/apply/test_offload_optimizer.py tests/apply/test_offload_activations.py \
        > "$out/gpu_tests.txt" 2>&1
    echo "exit $?" >> "$out/gpu_tests.txt"
else
    echo "no tests/ in this copy: the gpu tests were not run" > "$out/gpu_tests.txt"
fi
timeout 195 python bench/northstar.py --out "$out" --part check,plans --plan-batches 8,16 \
    --allows default,pure_bf16 --thread-variants 8 --deadline-s 185 "$@" \
    > "$out/plans_log.txt" 2>&1
echo "exit $?" >> "$out/plans_log.txt"
timeout 55 python bench/northstar.py --out "$out/frontier" --part frontier "$@" \
    > "$out/frontier_log.txt" 2>&1
echo "exit $?" >> "$out/frontier_log.txt"
