#!/usr/bin/env bash
# The GPU measurements after plans run 8 (H100, bench/results/plans_h100_run8.json), in order of
# need, each under its own time limit, packed into $OUT/pending.tar.gz after each piece:
#   1. allocator_settings_probe.json: what torch reports after expandable_segments:True is set at
#      run time (run 8's GPU test found the settings text off after the applier set it);
#   2. gpu_tests.txt: the ExpandableSegments GPU test with the snapshot-reading applier;
#   3. offload_host_probe.json (<= 150 s): pinned copy rates and the offloader's host time;
#   4. margin_probe.json (<= 230 s): LLaMA-1B's plan at Hugging Face full checkpointing's memory
#      against Hugging Face's checkpointing, alternated rounds (issue 11's >= 10%);
#   5. plans/plans_eager.json (the rest): the encoder and the Qwen2 shape, the CPU-bound steps
#      run 8 predicted worst, each plan also timed in alternation with the unmodified step.
#   PYTHONPATH=src [PENDING_BUDGET_S=550] [PENDING_ONLY="margin_log.txt ..."] bash bench/pending_run9.sh
#   (from the repository root; .whl carried)
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
mkdir -p "$dest" "$out/plans"
piece 40 alloc_log.txt python bench/allocator_settings_probe.py --out "$out"
[ -d .whl ] && pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
PYTHONPATH="${PYTHONPATH:-}:/tmp/site" piece 60 gpu_tests.txt python -m pytest -q -m gpu \
    -p no:cacheprovider tests/apply/test_expandable_segments.py
pack
piece 150 offload_log.txt python bench/offload_host_probe.py --out "$out"
pack
piece 230 margin_log.txt python bench/margin_probe.py --out "$out" --rounds "${MARGIN_ROUNDS:-4}"
pack
piece 600 plans_log.txt python bench/plans.py --out "$out/plans" --parts eager --plans-first \
    --pairs 8 --models transformer-encoder,qwen2-shaped
pack
