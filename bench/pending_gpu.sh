#!/usr/bin/env bash
# The GPU measurements still pending, in order of need, each under its own time limit (and the
# budget left), packed into $OUT/pending.tar.gz after each piece. Session 10 (H100) ran the
# allocator and offload probes and found two defects since fixed on the CPU: the offloader's
# sleeping waits (ResNet-50 +9.9 ms) and the expandable-segments applier's check and stale cache.
#   call 1 (PENDING_ONLY="calibrate.txt phases_log.txt plans_log.txt gpu_tests.txt", 570 s), in
#   this order (the cheap probes first, the tests last):
#     calibrate.txt (<= 40 s): `memfit calibrate` and `--host`, dry runs (nothing saved, so the
#       plans below still use the defaults): this machine's microbenchmarks, to re-predict the
#       plans with its calibration afterwards (bench/repredict_calibrated.py);
#     host_phases.json (<= 150 s): bench/host_phases_probe.py, the CPU time of each phase of
#       the eight models' unmodified steps at a small batch (bench/fit_host_phases.py);
#     plans/plans_eager.json: bench/plans.py's budgets of the encoder, ResNet-50, the Qwen2
#       shape and LLaMA-1B with the current code (spinning waits, the offload price), each plan
#       also timed in alternation with the unmodified step (--pairs 6: issue 13's +-5 points with
#       the host's drift cancelled);
#     gpu_tests.txt (<= 120 s): pytest -m gpu, the ExpandableSegments test with the cache
#       emptied at apply among them;
#   after the tests, phases_reversed_log.txt (<= 150 s): the host phases again, models in reverse
#     order (run 9's probe found GPT-2 medium's operators twice as dear as GPT-2's, measured
#     minutes later: the host's drift or the model?);
#   call 2 (PENDING_ONLY="ladder_log.txt margin_log.txt offload_log.txt"):
#     ladder/ladder_probe.json (<= 170 s): the rungs again, offloaded boundaries with spinning waits;
#     margin_probe.json (<= 230 s): LLaMA-1B's plan at Hugging Face full checkpointing's memory
#       against Hugging Face's checkpointing, alternated rounds (issue 11's >= 10%, on the H200 too);
#     offload_host_probe.json (<= 150 s), allocator_settings_probe.json: as in session 10.
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
mkdir -p "$dest" "$out/plans" "$out/ladder"
[ -d .whl ] && pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
piece 40 calibrate.txt sh -c 'python -m memfit.cli calibrate --dry-run --format json; \
    python -m memfit.cli calibrate --host --dry-run --format json'
piece 150 phases_log.txt python bench/host_phases_probe.py --out "$out"
pack
piece 600 plans_log.txt python bench/plans.py --out "$out/plans" --parts eager --plans-first \
    --pairs 6 --models transformer-encoder,tv-resnet50,qwen2-shaped,hf-llama-1b
pack
PYTHONPATH="${PYTHONPATH:-}:/tmp/site" piece 120 gpu_tests.txt python -m pytest -q -m gpu \
    -p no:cacheprovider
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
