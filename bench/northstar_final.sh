#!/usr/bin/env bash
# Issue 11's final GPU run (at most ~295 s on an H200), from the repository root:
#   PYTHONPATH=src bash bench/northstar_final.sh        (writes under $OUT, or ./northstar_out)
# Extra arguments go to every bench script (a CPU smoke test: --smoke). Pieces in order of
# priority, each under its own time limit and writing its files as it goes, so a piece that
# runs long loses only itself:
#   1. gpu_tests.txt (<= 40 s): the gpu-marked offload tests, among them apply / undo / drop
#      the model / apply again in one process (needs tests/ and pyproject.toml in the copy);
#   2. northstar.json (<= 135 s): memfit.plan's plans for Llama-3.2-3B's shape at 24 GiB, batch
#      8 and 16 (exact techniques), applied and measured in one process, then the batch-8 plan
#      with 8 host threads if time is left (the host step's rate beside training);
#   3. optimizer_state/optimizer_state.json (<= 65 s): bench/optimizer_state.py's step rows that
#      measured 11-20 GB over their prediction in run 1 (a model leaked by the row before; torchao
#      needed for the 8-bit rows, which are skipped without it);
#   4. frontier/northstar.json (<= 55 s): LLaMA-1B, memfit's plan against HF full checkpointing;
#   5. pure_bf16/northstar.json (what is left, if >= 40 s): the batch-8 plan with pure_bf16
#      allowed (measured only if it differs from piece 2's).
# Logs: *_log.txt beside them.
set -u
out="${OUT:-northstar_out}"
total=295
mkdir -p "$out/frontier" "$out/optimizer_state" "$out/pure_bf16"
if [ -d tests ]; then
    timeout 40 python -m pytest -q -m gpu -p no:cacheprovider tests/step/test_pinned.py \
        tests/apply/test_offload_optimizer.py tests/apply/test_offload_activations.py \
        tests/apply/test_dropped_models.py > "$out/gpu_tests.txt" 2>&1
    echo "exit $?" >> "$out/gpu_tests.txt"
else
    echo "no tests/ in this copy: the gpu tests were not run" > "$out/gpu_tests.txt"
fi
timeout 135 python bench/northstar.py --out "$out" --part plans --plan-batches 8,16 \
    --allows default --thread-variants 8 --deadline-s 125 "$@" > "$out/plans_log.txt" 2>&1
echo "exit $?" >> "$out/plans_log.txt"
timeout 65 python bench/optimizer_state.py --out "$out/optimizer_state" --parts steps \
    --plans "adamw + in backward,adamw 8bit,adamw 8bit + in backward,pure bf16,pure bf16 + in backward,pure bf16 + 8bit + in backward" \
    "$@" > "$out/optimizer_state_log.txt" 2>&1
echo "exit $?" >> "$out/optimizer_state_log.txt"
timeout 55 python bench/northstar.py --out "$out/frontier" --part frontier "$@" \
    > "$out/frontier_log.txt" 2>&1
echo "exit $?" >> "$out/frontier_log.txt"
left=$((total - SECONDS))
if [ "$left" -ge 40 ]; then
    timeout "$left" python bench/northstar.py --out "$out/pure_bf16" --part plans \
        --plan-batches 8 --allows pure_bf16 --same-as "$out/northstar.json" "$@" \
        > "$out/pure_bf16_log.txt" 2>&1
    echo "exit $?" >> "$out/pure_bf16_log.txt"
else
    echo "skipped: $left s left" > "$out/pure_bf16_log.txt"
fi
