"""One rank of an FSDP2 step traced on fake tensors: ZeRO-3's model states per rank, to the
byte; a trace re-sized for another number of GPUs equal to a trace made at that number; the
collectives' sizes; HSDP and estimate(gpus=...)."""

from __future__ import annotations

import collections
import math
import warnings

import pytest
import torch.distributed as dist

import memfit
from memfit.collectives import collective_s, communication_time, links_of
from memfit.devices import get_device
from memfit.errors import InvalidInputError, UnsupportedModelError
from memfit.techniques import Sharding
from memfit.trace.estimate import trace_step, with_gpus
from memfit.trace.scaling import peaks_by_gpus, resized_trace
from memfit.trace.settings import StepSettings
from memfit.trace.sharded_sizes import fake_process_group
from memfit.zoo.llama import Llama, LlamaConfig
from tests.torch_support import needs_fake_collectives

# hidden 96 and vocabulary 100: first dimensions that 3 and 8 do not divide (padded shards)
TINY = LlamaConfig(
    vocab_size=100, max_seq_len=32, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96
)
BATCH = "input_ids=int64[2,32]<100 labels=int64[2,32]<100"


def traced(gpus: int, precision: str = "fp32", **options):
    technique = Sharding(gpus=gpus, units=("layers.*",), **options)
    return trace_step(
        lambda: Llama(TINY), BATCH, StepSettings(precision=precision), plan=[technique]
    )


def bytes_by_role(step) -> collections.Counter:
    found: collections.Counter = collections.Counter()
    for key, role in step.sharded.roles.items():
        allocation = step.trace.allocations[key]
        found[role, allocation.category.value] += allocation.size
    return found


def shard_bytes(gpus: int, element_size: int = 4) -> int:
    """Rank 0's shard of every weight: ceil(dim0 / N) rows (FSDP2 pads dimension 0)."""
    params = Llama(TINY).parameters()
    return sum(math.ceil(p.shape[0] / gpus) * (p.numel() // p.shape[0]) for p in params) * (
        element_size
    )


@needs_fake_collectives
@pytest.mark.slow
@pytest.mark.parametrize("gpus", [2, 3, 8])
def test_model_states_per_rank_are_zero3s_16_bytes_per_parameter_over_n(gpus):
    # fp32 AdamW: a shard of the weights, of their gradients, and two moments of it (ZeRO
    # paper: 16P/N bytes; exact here with FSDP2's padding of dimension 0)
    found = bytes_by_role(traced(gpus))
    shard = shard_bytes(gpus)
    assert found["sharded_param", "param"] == shard
    assert found["sharded_grad", "grad"] == shard
    assert found["sharded_state", "optimizer"] == 2 * shard
    total = sum(p.numel() for p in Llama(TINY).parameters())
    assert 16 * total / gpus <= 4 * shard < 16 * (total / gpus + 2 * 100 * 64)


@needs_fake_collectives
@pytest.mark.slow
def test_a_trace_resized_for_another_n_equals_a_trace_made_at_that_n():
    base = traced(2)
    for gpus in (3, 8):
        direct = traced(gpus)
        resized = resized_trace(base.trace, base.sharded.sizes, gpus)
        assert resized.events == direct.trace.events
        sizes = {k: a.size for k, a in resized.allocations.items()}
        assert sizes == {k: a.size for k, a in direct.trace.allocations.items()}
    # every N from one trace: the peaks of N = 8 are those of the trace made at 8
    peaks = peaks_by_gpus(base.trace, base.marks, base.sharded.sizes, [2, 8, 64, 1024])
    assert peaks[8] == (direct.profile.peak_allocated, direct.profile.peak_reserved)


@needs_fake_collectives
@pytest.mark.slow
def test_collectives_gather_each_unit_twice_and_reduce_it_once_unless_kept():
    resharded = traced(2).sharded.collective_bytes(2)
    kept = traced(2, keep_unsharded=("layers.*",)).sharded.collective_bytes(2)
    layer = 4 * sum(p.numel() for p in Llama(TINY).layers[0].parameters())  # 2 | every dim0
    kinds = collections.Counter(kind for kind, _ in resharded)
    # forward: root and 2 layers; backward: the 2 layers again; one reduce-scatter per unit
    assert kinds == {"all_gather": 5, "reduce_scatter": 3}
    assert collections.Counter(kind for kind, _ in kept) == {"all_gather": 3, "reduce_scatter": 3}
    assert resharded[1] == ("all_gather", layer)


def test_communication_follows_the_ring_formula():
    spec = get_device("h100-80gb")
    rate = links_of(spec).intra_node
    one = collective_s("all_gather", 8 * 10**9, 8, rate)
    assert one == pytest.approx(8e9 * 7 / 8 / (0.8 * 450e9) + 7 * 5e-6)
    # across nodes the ring runs at the network's rate
    assert links_of(spec).rate(16) == 50 * 10**9
    overlapped = communication_time([("all_gather", 10**9)] * 3, 10.0, spec, 8)
    assert overlapped.exposed_s == pytest.approx(2 * collective_s("all_gather", 10**9, 8, rate))
    starved = communication_time([("all_gather", 10**9)] * 3, 0.0, spec, 8)
    assert starved.exposed_s == pytest.approx(starved.total_s)


@needs_fake_collectives
@pytest.mark.slow
def test_hsdp_shards_over_its_group_only():
    hsdp = bytes_by_role(traced(4, replicate=2))
    assert hsdp["sharded_param", "param"] == shard_bytes(2)


@needs_fake_collectives
def test_estimate_with_gpus_shards_the_repeated_blocks_and_reports_communication():
    profile = memfit.estimate(lambda: Llama(TINY), BATCH, precision="fp32", gpus=2)
    assert profile.plan == "FSDP2 x2 (layers.*)"
    assert any("all-gathers/reduce-scatters" in w for w in profile.warnings)
    one = memfit.estimate(lambda: Llama(TINY), BATCH, precision="fp32")
    assert profile.step_time_s > one.step_time_s * 0.99


def test_with_gpus_re_sizes_a_plans_sharding_and_refuses_what_cannot_be():
    hsdp = Sharding(gpus=16, units=("layers.*",), replicate=2)
    assert with_gpus([hsdp], 32, "llama-1b") == [Sharding(32, ("layers.*",), replicate=4)]
    assert with_gpus([hsdp], 1, "llama-1b") == []
    with pytest.raises(InvalidInputError, match="multiple of 8"):
        with_gpus([hsdp], 12, "llama-1b")
    with pytest.raises(InvalidInputError, match="whole number"):
        with_gpus(None, 0, "llama-1b")


def test_a_torch_whose_fake_collectives_fail_is_named_in_a_clear_error(monkeypatch):
    def fails(*args, **kwargs):  # as torch 2.6's does on fake tensors
        raise TypeError("Object of type 'FakeTensor' is not an instance of 'sequence'")

    for name in ("all_gather_single", "all_gather_into_tensor"):  # torch >= 2.14, older
        monkeypatch.setattr(dist, name, fails, raising=False)
    with pytest.raises(UnsupportedModelError, match="predict sharded steps with a newer torch"):
        traced(2)
    assert not dist.is_initialized()  # the fake process group is gone again


@needs_fake_collectives
def test_the_collectives_check_uses_names_this_torch_does_not_deprecate():
    # torch 2.14 renamed all_gather_into_tensor / reduce_scatter_tensor: the old names warned
    # FutureWarning on every sharded estimate (eight times a `memfit plan --gpus 8`)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with fake_process_group(2):
            assert dist.get_world_size() == 2
