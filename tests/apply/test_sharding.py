"""The Sharding applier in a real two-process job (gloo on the CPU): the same updates as one
process training on the whole batch, and a failure on one rank raised on both, without a hang."""

from __future__ import annotations

import multiprocessing
import queue

import pytest
import torch
import torch.distributed as dist

import memfit
from memfit.errors import InvalidInputError, MemfitError
from memfit.techniques import Sharding
from memfit.trace.estimate import trace_step
from memfit.trace.settings import StepSettings
from memfit.zoo.llama import Llama
from tests.apply import sharding_ranks
from tests.torch_support import needs_fake_collectives, needs_fsdp2_on_cpu

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")
WORLD = 2


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict[tuple[int, str], tuple]:
    """Every scenario of ``sharding_ranks`` on two spawned ranks: each result by (rank, name)."""
    context = multiprocessing.get_context("spawn")  # fork would copy autograd's threads
    results = context.Queue()
    store = tmp_path_factory.mktemp("sharding") / "store"
    processes = [
        context.Process(
            target=sharding_ranks.every_scenario, args=(rank, WORLD, str(store), results)
        )
        for rank in range(WORLD)
    ]
    for process in processes:
        process.start()
    expected = WORLD * (len(sharding_ranks.SCENARIOS) + 2)
    found: dict[tuple[int, str], tuple] = {}
    try:
        for _ in range(expected):
            rank, name, result = results.get(timeout=120)
            found[rank, name] = result
    except queue.Empty:
        pytest.fail(f"only {sorted(found)} answered: a rank hangs")
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    return found


def unsharded_training() -> tuple[list[float], dict[str, torch.Tensor]]:
    model = sharding_ranks.tiny_llama()
    optimizer = sharding_ranks.make_optimizer(model.parameters())
    step = memfit.apply([], model, optimizer, loss_fn=sharding_ranks.fp64_loss, precision="fp32")
    losses = [float(step(batch)) for batch in sharding_ranks.global_batches()]
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
@needs_fsdp2_on_cpu
@pytest.mark.parametrize("scenario", [*sharding_ranks.SCENARIOS, "guarded"])
def test_two_ranks_train_as_one_process_on_the_whole_batch(job, scenario):
    found = {rank: job[rank, scenario] for rank in range(WORLD)}
    for rank, result in found.items():
        assert result[0] == "ok", f"rank {rank}: {result}"
    losses, weights = unsharded_training()
    numel = {n: w.numel() for n, w in weights.items()}
    for rank, (_, _, rank_weights, local, state) in found.items():
        # each rank's loss is its half of the batch; their mean is the whole batch's
        assert rank_weights.keys() == weights.keys()
        for name, weight in weights.items():
            torch.testing.assert_close(
                torch.from_numpy(rank_weights[name]), weight, rtol=1e-10, atol=1e-12
            )
        # rank 0 holds ceil(dim0 / 2) rows of each weight, and a momentum buffer of them
        expected = {
            n: -(-w.shape[0] // WORLD) * (w.numel() // w.shape[0]) if rank == 0 else None
            for n, w in weights.items()
        }
        if rank == 0:
            assert local == expected
            assert state == sum(expected.values())
        assert sum(local.values()) < sum(numel.values())
    mean_losses = [(a + b) / 2 for a, b in zip(found[0][1], found[1][1], strict=True)]
    assert mean_losses == pytest.approx(losses, rel=1e-10)


@pytest.mark.slow
def test_a_rank_that_fails_makes_every_rank_raise(job):
    found = {rank: job[rank, "failing"] for rank in range(WORLD)}
    assert found[1][:2] == ("error", "ShardingError")
    assert "This rank: InvalidInputError" in found[1][2] and "layers.*" in found[1][2]
    assert found[0][:2] == ("error", "ShardingError")
    assert "rank(s) [1]" in found[0][2]


def test_outside_a_job_the_plan_names_torchrun():
    model = sharding_ranks.tiny_llama()
    with pytest.raises(InvalidInputError, match="torchrun --nproc-per-node 2"):
        memfit.apply([Sharding(gpus=2, units=("layers.*",))], model, precision="fp32")
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())


@pytest.mark.parametrize(
    ("technique", "message"),
    [
        (Sharding(gpus=1), "gpus must be an integer >= 2"),
        (Sharding(gpus=4, replicate=3), "must divide gpus=4"),
        (Sharding(gpus=2, param_dtype="int8"), "allowed are bf16, fp16, fp32"),
    ],
)
def test_malformed_sharding_is_refused_before_anything_changes(technique, message):
    model = sharding_ranks.tiny_llama()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(MemfitError, match=message):
        memfit.apply([technique], model, precision="fp32")
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.slow
@needs_fsdp2_on_cpu
@needs_fake_collectives
def test_the_traced_rank_holds_what_rank_0_of_the_job_held(job):
    # memfit's prediction (one rank on fake tensors, fake process group) against rank 0 of the
    # real gloo job: elements of the weights' shards and of the optimizer's state
    _, _, _, local, state = job[0, "resharded"]
    technique = sharding_ranks.SCENARIOS["resharded"]
    traced = trace_step(
        lambda: Llama(sharding_ranks.CONFIG),  # float32 on fake tensors: same elements
        sharding_ranks.batch_spec(),
        StepSettings(precision="fp32", optimizer=sharding_ranks.make_optimizer),
        plan=[technique],
    )
    found = {"sharded_param": 0, "sharded_state": 0}
    for key, role in traced.sharded.roles.items():
        allocation = traced.trace.allocations[key]
        if role in found and allocation.category.value in ("param", "optimizer"):
            found[role] += allocation.size // 4
    assert found == {"sharded_param": sum(local.values()), "sharded_state": state}
