"""cuDNN convolution workspaces: each class of call against what an H200 measured.

The measured figures are the per-operator scratch of the validation zoo's H200 run (torch 2.11,
cuDNN 9.19), joined to the calls' shapes in bench/results/conv_evidence.json.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

import memfit
from memfit.devices import get_device
from memfit.profile import Phase
from memfit.trace.allocator import round_size
from memfit.trace.cuda.convolution import conv_backward_workspaces, conv_forward_workspace
from memfit.trace.cuda.reductions import in_memory_order, reduction_scratch
from memfit.trace.cuda.stack import DEFAULT_STACK
from memfit.trace.session import new_recorder

MiB = 1 << 20
TAIL = 16  # bytes beyond the copies, in every workspace (16 or 147 measured)


def meta(*shape: int, dtype: torch.dtype = torch.bfloat16, channels_last: bool = False):
    tensor = torch.empty(shape, dtype=dtype, device="meta")
    return tensor.contiguous(memory_format=torch.channels_last) if channels_last else tensor


def forward(x, w, y, stride=1, padding=0, groups=1) -> float:
    return conv_forward_workspace(x, w, y, [stride] * 2, [padding] * 2, groups) / MiB


def backward(x, w, dy, stride=1, padding=0, groups=1) -> tuple[float, float]:
    data, weight = conv_backward_workspaces(
        dy, x, w, [stride] * 2, [padding] * 2, groups, [True, True, False]
    )
    return data / MiB, weight / MiB


def test_nchw_convolution_transposes_input_output_and_weight():
    # ResNet-50 bf16 inference, batch 256: the 3x3 conv of layer1 measured 196.07 MiB, the
    # strided 1x1 downsample of layer2 588.00 MiB
    x, w, y = meta(256, 64, 56, 56), meta(64, 64, 3, 3), meta(256, 64, 56, 56)
    assert forward(x, w, y, padding=1) == pytest.approx(196.07, rel=0.005)
    x, w, y = meta(256, 256, 56, 56), meta(512, 256, 1, 1), meta(256, 512, 28, 28)
    assert forward(x, w, y, stride=2) == pytest.approx(588.00, rel=0.005)
    # its backward (ResNet-50 bf16-mixed training, batch 64, layer4 3x3): 10.63 MiB
    x, w = meta(64, 512, 7, 7), meta(512, 512, 3, 3)
    data, weight = backward(x, w, meta(64, 512, 7, 7), padding=1)
    assert max(data - 4.5, weight) == pytest.approx(10.63, rel=0.01)  # the scratch measured


def test_image_stems_pad_channels_to_eight_in_16_bit_and_small_stems_take_none():
    # ResNet-50 bf16 inference stem (7x7, 3 channels): 588.05 MiB measured
    x, w, y = meta(256, 3, 224, 224), meta(64, 3, 7, 7), meta(256, 64, 112, 112)
    assert forward(x, w, y, stride=2, padding=3) == pytest.approx(588.05, rel=0.005)
    # EfficientNet-B0's 3x3 stride-2 stem: none measured in the forward
    x, w, y = meta(128, 3, 224, 224), meta(32, 3, 3, 3), meta(128, 32, 112, 112)
    assert forward(x, w, y, stride=2, padding=1) == 0


def test_pointwise_convolutions_transpose_only_at_small_sizes():
    # ResNet-50 bf16 inference: 1x1 at 56x56 measured none; at 7x7 61.25 MiB
    x, w, y = meta(256, 64, 56, 56), meta(256, 64, 1, 1), meta(256, 256, 56, 56)
    assert forward(x, w, y) == 0
    x, w, y = meta(256, 2048, 7, 7), meta(512, 2048, 1, 1), meta(256, 512, 7, 7)
    assert forward(x, w, y) == pytest.approx(61.25, rel=0.005)


def test_pointwise_weight_gradient_splits_the_batch_into_float32_partials():
    # ResNet-50 fp32 (batch 64) 1x1 256->64 at 56x56: 4.00 MiB; EfficientNet-B0 bf16 (batch
    # 128) 1x1 112->672 at 14x14: 36.75 MiB; one float32 weight gradient per image
    x, w = meta(64, 256, 56, 56, dtype=torch.float32), meta(64, 256, 1, 1, dtype=torch.float32)
    assert backward(x, w, meta(64, 64, 56, 56, dtype=torch.float32)) == (0, 4.0)
    x, w = meta(128, 112, 14, 14), meta(672, 112, 1, 1)
    assert backward(x, w, meta(128, 672, 14, 14))[1] == pytest.approx(36.75, rel=0.005)


def test_grouped_convolutions_pad_channels_per_group_to_a_power_of_two():
    # RegNet-X-1.6GF bf16: groups of 24 channels, 3x3 at 28x28: 43.00 MiB measured (1.33x)
    x, w, y = meta(64, 168, 28, 28), meta(168, 24, 3, 3), meta(64, 168, 28, 28)
    assert forward(x, w, y, padding=1, groups=7) == pytest.approx(43.00, rel=0.01)
    # ResNeXt-50 fp32: groups of 4 channels, none padded: 196.02 MiB
    x, w, y = (
        meta(64, 128, 56, 56, dtype=torch.float32),
        meta(128, 4, 3, 3, dtype=torch.float32),
        meta(64, 128, 56, 56, dtype=torch.float32),
    )
    assert forward(x, w, y, padding=1, groups=32) == pytest.approx(196.02, rel=0.005)


def test_depthwise_nchw_takes_no_workspace():
    # MobileNet-V3 / EfficientNet-B0: 91 of 94 depthwise calls measured none
    x, w = meta(128, 144, 56, 56), meta(144, 1, 3, 3)
    assert forward(x, w, meta(128, 144, 28, 28), stride=2, padding=1, groups=144) == 0
    assert backward(x, w, meta(128, 144, 28, 28), stride=2, padding=1, groups=144) == (0, 0)


def test_channels_last_depthwise_backward_takes_float32_copies():
    # ConvNeXt-T fp32 (channels-last depthwise 7x7): none forward; per operator, 18.38 MiB
    # measured at 7x7 and 598.00 MiB at 56x56, with a bias. At 7x7 that is the bias gradient's
    # reduction buffer, not cuDNN's (bench/conv_probe.py's 7x7 depthwise calls have no bias);
    # at 56x56 cuDNN's four float32 copies of x + dy and its partial sums
    f32 = torch.float32
    x, w = meta(64, 768, 7, 7, dtype=f32, channels_last=True), meta(768, 1, 7, 7, dtype=f32)
    assert forward(x, w, meta(64, 768, 7, 7, dtype=f32, channels_last=True), 1, 3, 768) == 0
    dy = meta(64, 768, 7, 7, dtype=f32, channels_last=True)
    assert backward(x, w, dy, 1, 3, 768)[1] == 0
    shape, dims = in_memory_order(tuple(dy.shape), tuple(dy.stride()), (0, 2, 3))
    bias_sum = reduction_scratch(shape, dims, f32, get_device("h200")).buffer_bytes
    assert bias_sum / MiB == pytest.approx(18.38, rel=0.005)
    x, w = meta(64, 96, 56, 56, dtype=f32, channels_last=True), meta(96, 1, 7, 7, dtype=f32)
    dy = meta(64, 96, 56, 56, dtype=f32, channels_last=True)
    assert backward(x, w, dy, 1, 3, 96)[1] == pytest.approx(598.0, rel=0.02)


def test_channels_last_backward_matches_the_bias_free_probe():
    # bench/results/conv_probe_h200.json (H200, no bias): 7x7 depthwise fp32 at 56x56, batch 32
    # and 128, and ConvNeXt-nano's recorded step (batch 64, 80 and 160 channels)
    f32 = torch.float32
    for batch, channels, side, measured in (
        (32, 96, 56, 318219895),
        (128, 96, 56, 1243063927),
        (64, 80, 56, 522084395),
        (64, 160, 28, 265435135),
    ):
        x = meta(batch, channels, side, side, dtype=f32, channels_last=True)
        w = meta(channels, 1, 7, 7, dtype=f32)
        predicted = backward(x, w, x, 1, 3, channels)[1]
        assert predicted == pytest.approx(measured / MiB, rel=0.005), (batch, channels, side)
    # none at 14x14 (ConvNeXt-nano's third stage: only the bias gradient's buffer)
    x, w = meta(64, 320, 14, 14, dtype=f32, channels_last=True), meta(320, 1, 7, 7, dtype=f32)
    assert backward(x, w, x, 1, 3, 320)[1] == 0
    # grouped 3x3 (ResNeXt's groups of 4, RegNet's of 8): twice the float32 input
    for channels, groups, measured in ((128, 32, 103350663), (224, 28, 181011039)):
        x = meta(128, channels, 28, 28, dtype=f32, channels_last=True)
        w = meta(channels, channels // groups, 3, 3, dtype=f32)
        assert backward(x, w, x, 1, 1, groups)[1] == pytest.approx(measured / MiB, rel=0.03)


def test_float32_without_tf32_is_not_modelled(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    f32 = torch.float32
    x, w, y = (
        meta(8, 64, 56, 56, dtype=f32),
        meta(64, 64, 3, 3, dtype=f32),
        meta(8, 64, 56, 56, dtype=f32),
    )
    assert forward(x, w, y, padding=1) == 0


class Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_estimate_holds_the_workspace_beside_the_output():
    # inference of one conv: weight, input, output and, inside the call, x + y + w
    batch = 32
    profile = memfit.estimate(
        Conv(), f"bfloat16[{batch},64,56,56]", precision="bf16", device="h200", mode="inference"
    )
    x = y = batch * 64 * 56 * 56 * 2
    w = 64 * 64 * 9 * 2
    expected = round_size(w) + round_size(x) + round_size(y) + round_size(x + y + w + TAIL)
    assert profile.peak_allocated == expected


def test_chips_before_sm80_get_no_convolution_workspace():
    batch = 32
    profile = memfit.estimate(
        Conv(), f"float32[{batch},64,56,56]", precision="fp32", device="t4", mode="inference"
    )
    x = y = batch * 64 * 56 * 56 * 4
    assert profile.peak_allocated == round_size(64 * 64 * 9 * 4) + round_size(x) + round_size(y)


def test_backward_makes_the_data_workspace_before_the_weight_gradient():
    # cudnn_convolution_backward: grad input, its workspace, then grad weight and its workspace
    recorder = new_recorder(get_device("h200"), DEFAULT_STACK)
    with FakeTensorMode():
        x = torch.empty(8, 64, 28, 28, dtype=torch.bfloat16)
        w = torch.empty(64, 64, 3, 3, dtype=torch.bfloat16)
        dy = torch.empty(8, 64, 28, 28, dtype=torch.bfloat16)
        with recorder:
            recorder.phase = Phase.BACKWARD
            torch.ops.aten.convolution_backward(
                dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False]
            )
    made = [recorder.trace.allocations[k] for k in recorder.trace.events if k > 0]
    assert [(a.op, a.shape) for a in made] == [
        ("convolution_backward", (8, 64, 28, 28)),
        ("convolution_backward (cuDNN data workspace)", ()),
        ("convolution_backward", (64, 64, 3, 3)),
        ("convolution_backward (cuDNN weight workspace)", ()),
    ]
    transposes = 2 * 8 * 64 * 28 * 28 * 2 + 64 * 64 * 9 * 2  # dx + dy + w, bf16
    # 6,272 output positions: too few for bf16 split-K partial sums
    assert [made[1].size, made[3].size] == [transposes + TAIL, transposes + TAIL]


def test_workspaces_never_fit_a_block_the_size_of_their_copies():
    # ResNet-50 fp32 (batch 64), the strided 1x1 of layer2.0 and the 3x3s of layer1, measured in
    # a training step on the H200 (bench/results/snapshots): forward 205,521,408 B once rounded
    # to 512 (the input's 196 MiB block, freed by then, cannot hold it), backward data likewise
    x = meta(64, 64, 56, 56, dtype=torch.float32)
    w = meta(64, 64, 3, 3, dtype=torch.float32)
    assert round_size(conv_forward_workspace(x, w, x, [1, 1], [1, 1], 1)) == round_size(102908051)
    data, _ = conv_backward_workspaces(x, x, w, [1, 1], [1, 1], 1, [True, False, False])
    assert round_size(data) == round_size(102908051)


@pytest.mark.parametrize(
    "dtype, batch, c_in, c_out, side, kernel, stride, measured",
    [
        # bench/results/conv_probe_h200.json, the weight gradient alone (H200, cuDNN 9.19)
        (torch.float32, 32, 64, 64, 56, 3, 1, 53592743),  # 14 partial copies
        (torch.float32, 32, 128, 128, 56, 3, 2, 73073319),  # 14
        (torch.float32, 128, 256, 512, 56, 1, 2, 624951951),  # 16
        (torch.float32, 128, 256, 256, 14, 3, 1, 60818015),  # 3 (8 MiB // 2.25 MiB)
        (torch.bfloat16, 128, 64, 64, 56, 3, 1, 104751783),  # 13
        (torch.bfloat16, 32, 128, 128, 56, 3, 2, 34767239),  # 4
        (torch.bfloat16, 32, 256, 256, 14, 3, 1, 7602192),  # none: 6,272 positions
    ],
)
def test_weight_gradient_keeps_split_k_partial_sums(
    dtype, batch, c_in, c_out, side, kernel, stride, measured
):
    x = meta(batch, c_in, side, side, dtype=dtype)
    w = meta(c_out, c_in, kernel, kernel, dtype=dtype)
    out = side // stride
    dy = meta(batch, c_out, out, out, dtype=dtype)
    _, weight = conv_backward_workspaces(
        dy, x, w, [stride] * 2, [kernel // 2] * 2, 1, [False, True, False]
    )
    assert weight == pytest.approx(measured, rel=0.02)


@pytest.mark.parametrize(
    ("dtype", "batch", "c_in", "c_out", "side", "measured"),
    [
        # ResNet-50's downsamples, weight gradient alone: x + dy copies, then split-K float32
        # copies of the weight, fewer than a 3x3's (13 and 4)
        # bench/results/conv_probe_h200.json and both plan recordings (bf16, batch 128): 7
        (torch.bfloat16, 128, 256, 512, 56, 311951983),
        (torch.float16, 128, 256, 512, 56, 311951983),  # 7
        (torch.float16, 32, 256, 512, 56, 78643759),  # 3 (bf16 at batch 32 keeps 2)
        # tv-resnet50-bf16-mixed_steps_snapshot_h200 (batch 64, 50,176 positions): 3
        (torch.bfloat16, 64, 256, 512, 56, 155714095),
        # the plan recordings: layer3.0.downsample, 25,088 positions: 3 copies of 2 MiB
        (torch.bfloat16, 128, 512, 1024, 28, 160432687),
        # the zoo recording: layer3.0.downsample at 12,544 positions, layer4.0's at 3,136: none
        (torch.bfloat16, 64, 512, 1024, 28, 77070352),
        (torch.bfloat16, 64, 1024, 2048, 14, 38535184),
    ],
)
def test_16bit_strided_1x1_weight_gradient_keeps_fewer_split_k_copies(
    dtype, batch, c_in, c_out, side, measured
):
    # a mis-sized layer2.0.downsample (13 copies: 3.1 MB over) let the stem's workspace fit
    # its cached block in the trace, not on the GPU: ResNet-50's reserved peak 4-10% under
    x, w = meta(batch, c_in, side, side, dtype=dtype), meta(c_out, c_in, 1, 1, dtype=dtype)
    dy = meta(batch, c_out, side // 2, side // 2, dtype=dtype)
    _, weight = conv_backward_workspaces(dy, x, w, [2, 2], [0, 0], 1, [False, True, False])
    assert weight == pytest.approx(measured, abs=1024)  # tails of 16 to 623 bytes


@pytest.mark.parametrize(
    ("dtype", "batch", "c_out", "kernel", "measured", "tolerance"),
    [
        # ResNet-50's 7x7 stride-2 stem in bf16: 6,121,600 B above the NHWC copies at any batch
        (torch.bfloat16, 32, 64, 7, 83242128, 0),  # bench/results/conv_probe_h200.json
        (torch.bfloat16, 64, 64, 7, 160312464, 0),  # tv-resnet50-bf16-mixed's recording
        (torch.bfloat16, 128, 64, 7, 314453136, 0),  # the probe and both plan recordings
        # 3x3 stride-2 stems: RegNet-X-1.6GF bf16 (batch 64), MobileNet-V3 fp16 (batch 128)
        (torch.bfloat16, 64, 32, 3, 103926416, 0),
        (torch.float16, 128, 16, 3, 155327376, 23040),  # 1,184,400 above: 23,040 more
    ],
)
def test_16bit_stem_weight_gradient_keeps_split_k_partial_sums(
    dtype, batch, c_out, kernel, measured, tolerance
):
    x, w = meta(batch, 3, 224, 224, dtype=dtype), meta(c_out, 3, kernel, kernel, dtype=dtype)
    dy = meta(batch, c_out, 112, 112, dtype=dtype)
    _, weight = conv_backward_workspaces(
        dy, x, w, [2, 2], [kernel // 2] * 2, 1, [False, True, False]
    )
    assert weight == pytest.approx(measured, abs=tolerance + 4096)


def test_patchify_and_float16_7x7_stems_keep_no_stem_partial_sums():
    # fp16's 7x7 stem runs another engine (bench/results/conv_probe_h200.json: 257,328,239 B
    # at batch 128, below the copies); patchify stems (stride = kernel) differ by 19-51 MB
    # either way: neither gets the 16-bit stems' partial sums
    x, w = meta(128, 3, 224, 224, dtype=torch.float16), meta(64, 3, 7, 7, dtype=torch.float16)
    dy = meta(128, 64, 112, 112, dtype=torch.float16)
    _, weight = conv_backward_workspaces(dy, x, w, [2, 2], [3, 3], 1, [False, True, False])
    copies = 128 * 8 * 224 * 224 * 2 + 128 * 64 * 112 * 112 * 2 + 64 * 8 * 49 * 2
    assert weight == copies + TAIL
    x, w, dy = meta(64, 3, 224, 224), meta(768, 3, 16, 16), meta(64, 768, 14, 14)
    _, weight = conv_backward_workspaces(dy, x, w, [16, 16], [0, 0], 1, [False, True, False])
    copies = 64 * 8 * 224 * 224 * 2 + 64 * 768 * 14 * 14 * 2 + 768 * 8 * 256 * 2
    assert weight == copies + TAIL


@pytest.mark.parametrize(
    ("dtype", "batch", "c_in", "c_out", "measured"),
    [
        # bench/results/conv_probe_h200.json, 1x1 at 14x14 (x + dy copies, then float32
        # partial sums of the weight): 2 copies in bf16, 3 in fp16 from 12,544 positions
        (torch.bfloat16, 128, 1024, 256, 66322735),
        (torch.float16, 128, 1024, 256, 67371567),
        (torch.bfloat16, 128, 512, 512, 53477679),
        (torch.float16, 128, 512, 512, 54526511),
        (torch.float16, 128, 1024, 512, 83362351),
        (torch.bfloat16, 32, 1024, 256, 16056336),  # none: 6,272 positions
        # a 2 MiB weight (ResNet-50's layer4.0.conv1): 3 copies in bf16 too at 25,088
        # positions (both plan recordings), none at 12,544 (tv-resnet50-bf16-mixed's, batch 64)
        (torch.bfloat16, 128, 1024, 512, 83362351),
        (torch.bfloat16, 64, 1024, 512, 38535184),
    ],
)
def test_pointwise_weight_gradient_through_copies_keeps_split_k_partial_sums(
    dtype, batch, c_in, c_out, measured
):
    x, w = meta(batch, c_in, 14, 14, dtype=dtype), meta(c_out, c_in, 1, 1, dtype=dtype)
    dy = meta(batch, c_out, 14, 14, dtype=dtype)
    _, weight = conv_backward_workspaces(dy, x, w, [1, 1], [0, 0], 1, [False, True, False])
    assert weight == pytest.approx(measured, abs=1024)  # the tail: 16 to 559 bytes


@pytest.mark.gpu
@pytest.mark.parametrize(
    "shape",
    [
        (64, 64, 56, 3, 1, 1),  # general: 3x3
        (256, 512, 56, 1, 2, 1),  # strided 1x1
        (2048, 512, 7, 1, 1, 1),  # pointwise at 7x7
        (168, 168, 28, 3, 1, 7),  # grouped, 24 channels per group
        (144, 144, 56, 3, 2, 144),  # depthwise
    ],
)
def test_forward_workspace_matches_the_gpu(shape) -> None:
    # the scratch a real forward convolution reaches (peak - after), bf16, batch 32
    c_in, c_out, side, kernel, stride, groups = shape
    x = torch.randn(32, c_in, side, side, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(c_out, c_in // groups, kernel, kernel, device="cuda", dtype=torch.bfloat16)

    def conv() -> torch.Tensor:
        return torch.nn.functional.conv2d(x, w, stride=stride, padding=kernel // 2, groups=groups)

    conv()  # cuDNN picks and caches its plan
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    y = conv()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()
    predicted = conv_forward_workspace(x, w, y, [stride] * 2, [kernel // 2] * 2, groups)
    assert abs(measured - predicted) <= max(0.1 * measured, MiB)


def test_float16_depthwise_weight_gradients_copy_the_input_to_float32():
    # bench/results/conv_probe_h200.json (32 channels, 3x3, 112x112, no bias) and MobileNet-V3
    # fp16's recording (72 channels 3x3 at 56x56; 120 channels 5x5 at 28x28; batch 128)
    f16 = torch.float16
    for batch, channels, kernel, side, measured in (
        (32, 32, 3, 112, 51562178),
        (128, 32, 3, 112, 205702850),
        (128, 72, 3, 56, 116150106),
        (128, 120, 5, 28, 48402542),
    ):
        x = meta(batch, channels, side, side, dtype=f16)
        w = meta(channels, 1, kernel, kernel, dtype=f16)
        predicted = backward(x, w, x, 1, kernel // 2, channels)[1]
        assert predicted == pytest.approx(measured / MiB, rel=0.005), (channels, side)
    # none: bf16, 16 channels, 14x14, a 7x7 kernel, a stride (the same sources)
    none = (
        (torch.bfloat16, 32, 3, 112, 1),
        (f16, 16, 3, 112, 1),
        (f16, 480, 3, 14, 1),
        (f16, 96, 7, 56, 1),
        (f16, 144, 3, 56, 2),
    )
    for dtype, channels, kernel, side, stride in none:
        x = meta(128, channels, side, side, dtype=dtype)
        w = meta(channels, 1, kernel, kernel, dtype=dtype)
        dy = meta(128, channels, side // stride, side // stride, dtype=dtype)
        assert backward(x, w, dy, stride, kernel // 2, channels) == (0, 0), (dtype, channels)
