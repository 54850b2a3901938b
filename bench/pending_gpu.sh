#!/usr/bin/env bash
# The GPU measurements of the current code, each under its own time limit (and the budget left),
# packed into $OUT/pending.tar.gz after each piece; PENDING_ONLY picks the pieces (their logs'
# names). Session 11 ran the host phases, calibrate and plans run 9 (call 1 of its header);
# session 12 adds the planner's measure=N:
#   pending since session 14 (it had no GPU time; session 15 found none lent): one call,
#     PENDING_ONLY="gpu_tests.txt measured14_log.txt lean_gpt2_log.txt low_bit_log.txt"
#     (about 560 s; .whl carried for torchao):
#     gpu_tests.txt: the GPU tests (a storage offloaded under two shapes comes back under each:
#       the GPU path has not run since that change);
#     measured14/measured_plans.json: the Qwen2 shape and the encoder planned with measure=4,
#       with per-module lean hooks (the Qwen2 shape's `lean x7 + chunked loss x8`, +1.6%
#       predicted at 0.5, is unmeasured);
#     lean_gpt2/lean_scope_probe.json: GPT-2's one lean block (+5.5% on the H200 with the
#       hooks around the whole forward; per-module hooks not yet measured);
#     low_bit/low_bit_step_probe.json: torchao's compiled low-bit step's buffers on the GPU
#       against memfit's, read from inductor's CPU code (2.95 GiB predicted on Llama-3.2-3B's
#       tied embedding: it decides whether the low-bit 3B plan fits 24 GiB).
#   session 13 ran, outside this script: bench/lean_scope_probe.py (Qwen2 shape, H100; the encoder
#     and GPT-2, H200) and bench/measured_plans.py runs 3 and 4 (Qwen2 shape and encoder, H100).
#   session 12 ran, on an H100: measured/measured_plans.json (bench/measured_plans.py: the
#     encoder, the Qwen2 shape, ResNet-50 and LLaMA-1B planned on the GPU with measure=4,
#     against their unmodified step and Hugging Face's full checkpointing; <= 480 s;
#     PENDING_ONLY="measured_log.txt"), the GPU tests, and call 2 below
#     (bench/results/*_h100_run*.json of 5 December, afternoon). Nothing is pending; on an
#     H200, measured_log.txt would give the same table for the GPU of plans run 9.
#   call 2 (PENDING_ONLY="ladder_log.txt offload_log.txt alloc_log.txt", about 130 s):
#     ladder/ladder_probe.json (<= 170 s): the rungs, offloaded boundaries with the
#       offloader's spinning waits (run 8's ladder had sleeping ones);
#     offload_host_probe.json (<= 150 s), allocator_settings_probe.json;
#     margin_probe.json (margin_log.txt, <= 230 s): only if wanted again (run 9 measured
#       LLaMA-1B's plan against Hugging Face's checkpointing on the H200: 10.2% less time).
#   session 11's call 1 (PENDING_ONLY="calibrate.txt phases_log.txt plans_log.txt"):
#     calibrate.txt, host_phases.json, plans/plans_eager.json (plans run 9, --pairs 6),
#     phases_reversed_log.txt: done (bench/results/*_run9*, host_phases_h200*.json).
#   PYTHONPATH=src [PENDING_BUDGET_S=550] [PENDING_ONLY="..."] bash bench/pending_gpu.sh
#   (from the repository root; .whl carried for torchao)
set -u
dest="${OUT:-pending_out}"
out="${PENDING_SCRATCH:-/tmp/pending_scratch}"
budget="${PENDING_BUDGET_S:-550}"
pack() { tar czf "$dest/pending.tar.gz.part" -C "$out" . && mv "$dest/pending.tar.gz.part" "$dest/pending.tar.gz"; }
case "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" in
    *H100*) export MEMFIT_BENCH_DEVICE=h100-80gb ;;
    *) export MEMFIT_BENCH_DEVICE="${MEMFIT_BENCH_DEVICE:-h200}" ;;
esac
# run a piece with at most LIMIT seconds, and none of what the budget has left under 30 s
piece() {
    local limit=$1 log=$2; shift 2
    local left=$((budget - SECONDS))
    case " ${PENDING_ONLY:-$log} " in *" $log "*) ;; *) return ;; esac
    [ "$left" -lt 30 ] && { echo "skipped: $left s left" > "$out/$log"; return; }
    timeout "$((left < limit ? left : limit))" "$@" > "$out/$log" 2>&1
    echo "exit $?" >> "$out/$log"
}
mkdir -p "$dest" "$out/plans" "$out/ladder" "$out/measured" "$out/measured14" "$out/lean_gpt2" \
    "$out/low_bit"
[ -d .whl ] && pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
PYTHONPATH="${PYTHONPATH:-}:/tmp/site" piece 120 gpu_tests.txt python -m pytest -q -m gpu \
    -p no:cacheprovider
pack
piece 300 measured14_log.txt python bench/measured_plans.py --out "$out/measured14" \
    --models qwen2-shaped,transformer-encoder
pack
PYTHONPATH="${PYTHONPATH:-}:/tmp/site" piece 90 low_bit_log.txt python bench/low_bit_step_probe.py \
    --out "$out/low_bit"
pack
piece 120 lean_gpt2_log.txt python bench/lean_scope_probe.py --out "$out/lean_gpt2" \
    --models hf-gpt2
pack
piece 480 measured_log.txt python bench/measured_plans.py --out "$out/measured"
pack
piece 40 calibrate.txt sh -c 'python -m memfit.cli calibrate --dry-run --format json; \
    python -m memfit.cli calibrate --host --dry-run --format json'
piece 150 phases_log.txt python bench/host_phases_probe.py --out "$out"
pack
piece 600 plans_log.txt python bench/plans.py --out "$out/plans" --parts eager --plans-first \
    --pairs 6 --models transformer-encoder,tv-resnet50,qwen2-shaped,hf-llama-1b
pack
mkdir -p "$out/reversed"
piece 150 phases_reversed_log.txt python bench/host_phases_probe.py --out "$out/reversed" \
    --models transformer-encoder,tv-resnet50,hf-bert-base,hf-gpt2-medium,mistral-8l,qwen2-shaped,hf-llama-1b,hf-gpt2
pack
piece 170 ladder_log.txt python bench/ladder_probe.py --out "$out/ladder"
pack
piece 230 margin_log.txt python bench/margin_probe.py --out "$out" --rounds "${MARGIN_ROUNDS:-4}"
pack
piece 150 offload_log.txt python bench/offload_host_probe.py --out "$out"
piece 40 alloc_log.txt python bench/allocator_settings_probe.py --out "$out"
pack
