"""A plan's note when the CPU issuing the step bounds it, the step-time model's roughest case.

Eager PyTorch issues every operator from Python; a step whose kernels are small (narrow layers,
small batches, micro-batches) waits on the CPU, not the GPU. The model prices that CPU time per
operator, call and region, averaged over the models it was fitted on, and such steps also
measure as the machine's CPU runs: on the H200 one configuration's overhead moved by up to 40
points between runs (the README's known limitations). The plan says so, with the figures.
"""

from __future__ import annotations

from memfit.trace.session import StepRecord

__all__ = ["HOST_BOUND_SHARE", "host_bound_note"]

# the share of the predicted step the CPU's issuing must reach for the note. bench/plans.py's
# eight models unmodified, predicted for the H200 against the share of run 1's measured steps
# spent issuing them: the Qwen2 shape 0.95 (measured 0.98) and the encoder 0.96 (0.92) above
# it; GPT-2, GPT-2 medium, LLaMA-1B, the Mistral shape, BERT-base, ResNet-50 0.33-0.59
# (0.41-0.71) below
HOST_BOUND_SHARE = 0.8


def host_bound_note(record: StepRecord) -> str | None:
    """The note for a step the CPU bounds, None for one the GPU does."""
    step_s, host_s = record.step_time_s(), record.host_time_s()
    if step_s <= 0 or host_s < HOST_BOUND_SHARE * step_s:
        return None
    return (
        f"the CPU issuing the step's operators bounds it (predicted {host_s * 1e3:.1f} of "
        f"{step_s * 1e3:.1f} ms): step times of such steps are predicted roughly and move with "
        "the machine's CPU (one configuration's overhead by up to 40 points between runs on an "
        "H200): on that GPU, memfit.plan(..., measure=3) (memfit plan --measure 3) times the "
        "chosen plan and the next two and keeps the fastest"
    )
