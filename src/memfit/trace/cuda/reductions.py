"""Scratch memory of PyTorch's CUDA reduction kernels (``sum``, ``mean`` over some dimensions).

When a reduction has few outputs and many inputs per output (the gradient of a bias: a sum over
batch and sequence), ``gpu_reduce_kernel`` splits each output's inputs across thread blocks and
combines their partial results through a global buffer that it allocates from the caching
allocator: ``acc_size * num_outputs * ctas_per_output * block_width * output_vec_size`` bytes,
plus one int semaphore per block column. On an H100 this is 48 MiB for the bias gradient of a
768-wide layer over 8192 tokens, and up to 132 MiB for wider ones: enough to move the peak.

This reproduces ``setReduceConfig`` (``aten/src/ATen/native/cuda/Reduce.cuh``) for the common
case: a dense input whose reduced dimensions are, in memory order, the outer ones (output
vectorised along the contiguous kept dimension) or the inner ones (reduction along the fastest
dimension). Measured on the H200 to the byte for channels-last sums over batch and space (the
bias and layer-scale gradients of timm's ConvNeXt-nano, fp32, batch 64: 21.6 to 138.6 MB
buffers at all four stages; bench/results/snapshots/timm-convnext-nano-fp32_steps_snapshot_h200
.pickle.gz).

Known limitations:
    * Inputs whose reduced and kept dimensions interleave are treated by their innermost
      dimension only; reductions split into 32-bit-indexable pieces are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memfit.devices import DeviceSpec

__all__ = ["ReductionScratch", "in_memory_order", "reduction_scratch"]

_MAX_THREADS = 512  # mnt_wrapper<T>::MAX_NUM_THREADS for real types
_WARP = 32
_MIN_VALUES_PER_THREAD = 16
_MAX_VALUES_PER_THREAD = 256


@dataclass(frozen=True)
class ReductionScratch:
    buffer_bytes: int
    semaphore_bytes: int


def _last_pow2(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _div_up(a: int, b: int) -> int:
    return -(-a // b)


def in_memory_order(
    shape: tuple[int, ...], strides: tuple[int, ...], dims: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``shape`` with its axes from the slowest to the fastest in memory, and ``dims`` renamed.

    TensorIterator orders a dense tensor's dimensions by stride before the reduction is
    configured: a channels-last ``[N, C, H, W]`` summed over ``(0, 2, 3)`` (a convolution's bias
    gradient) is a reduction over the outer dimensions ``N, H, W`` of ``[N, H, W, C]``.
    """
    ndim = len(shape)
    wanted = {d % ndim for d in dims} if ndim else set()
    # slowest first; size-1 axes have no say in the layout and go outermost
    order = sorted(range(ndim), key=lambda a: (shape[a] > 1, -strides[a], a))
    return tuple(shape[a] for a in order), tuple(i for i, a in enumerate(order) if a in wanted)


def reduction_scratch(
    shape: tuple[int, ...],
    dims: tuple[int, ...],
    dtype: torch.dtype,
    device: DeviceSpec,
) -> ReductionScratch:
    """The global buffer a CUDA sum/mean over ``dims`` allocates, ``shape`` in memory order
    (``in_memory_order``; a contiguous tensor's own)."""
    ndim = len(shape)
    dims = tuple(sorted({d % ndim for d in dims})) if ndim else ()
    num_outputs = 1
    for axis, size in enumerate(shape):
        if axis not in dims:
            num_outputs *= size
    numel = 1
    for size in shape:
        numel *= size
    if num_outputs == 0 or numel == 0:
        return ReductionScratch(0, 0)
    inputs_per_output = numel // num_outputs
    acc_size = 8 if dtype in (torch.float64, torch.complex64) else 4
    on_fastest = not dims or (ndim - 1) in dims or len(dims) == ndim
    output_vec = 1
    if on_fastest:
        dim0, dim1 = inputs_per_output, num_outputs
    else:
        dim0, dim1 = num_outputs, inputs_per_output
        innermost_kept = shape[-1]
        output_vec = 4
        while output_vec > 1 and innermost_kept % output_vec:
            output_vec //= 2
        dim0 //= output_vec
    # set_block_dimension
    max_threads = _MAX_THREADS // output_vec
    dim0_pow2 = min(_last_pow2(dim0), max_threads)
    dim1_pow2 = min(_last_pow2(dim1), max_threads)
    block_width = min(dim0_pow2, _WARP)
    block_height = min(dim1_pow2, max_threads // block_width)
    block_width = min(dim0_pow2, max_threads // block_height)
    num_threads = block_width * block_height
    step_input, step_output = 1, 1
    if on_fastest:
        step_input *= block_width
    else:
        step_output *= block_width
    values_per_thread = _div_up(inputs_per_output, step_input)
    if values_per_thread < min(block_height * 16, _MAX_VALUES_PER_THREAD):
        return ReductionScratch(0, 0)  # each warp takes its own outputs: no block-y split
    step_input *= block_height
    values_per_thread = _div_up(inputs_per_output, step_input)
    target_grid = device.num_sms * (device.max_threads_per_sm // num_threads)
    grid = _div_up(num_outputs // output_vec, step_output)
    if values_per_thread < _MAX_VALUES_PER_THREAD or grid > target_grid:
        return ReductionScratch(0, 0)
    ctas = max(
        _div_up(values_per_thread, _MAX_VALUES_PER_THREAD),
        min(_div_up(target_grid, grid), _div_up(values_per_thread, _MIN_VALUES_PER_THREAD)),
    )
    if ctas <= 1:
        return ReductionScratch(0, 0)
    size = acc_size * num_outputs * ctas
    if not on_fastest:
        size *= block_width * output_vec
    return ReductionScratch(size, 4 * grid)
