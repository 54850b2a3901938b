"""What each rank of the two-process gloo jobs in ``test_sharding.py`` runs (spawned)."""

from __future__ import annotations

import datetime
import functools
import traceback
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

import memfit
from memfit.techniques import Sharding
from memfit.zoo.llama import Llama, LlamaConfig

CONFIG = LlamaConfig(
    vocab_size=64, max_seq_len=16, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48
)
PER_RANK = 2  # sequences in each rank's batch
STEPS = 2


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return Llama(CONFIG).double()


def global_batches() -> list[dict[str, torch.Tensor]]:
    """The batches of every step, for all ranks together (rank r takes rows r*PER_RANK...)."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(STEPS):
        ids = torch.randint(0, CONFIG.vocab_size, (2 * PER_RANK, 16), generator=generator)
        batches.append({"input_ids": ids, "labels": ids.clone()})
    return batches


def batch_spec() -> str:
    """One rank's batch, as an input spec (for memfit's prediction)."""
    ids = f"int64[{PER_RANK},16]<{CONFIG.vocab_size}"
    return f"input_ids={ids} labels={ids}"


def fp64_loss(output: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy in the logits' float64 (the zoo's loss upcasts to float32 only)."""
    logits = output.logits[:, :-1].reshape(-1, CONFIG.vocab_size)
    return torch.nn.functional.cross_entropy(logits, batch["labels"][:, 1:].reshape(-1))


def make_optimizer(params: Any) -> torch.optim.Optimizer:
    """SGD with momentum: its update is linear in the gradient (a wrong gradient shows), and
    its one buffer per weight is state to count."""
    return torch.optim.SGD(params, lr=0.5, momentum=0.9)


def _init(rank: int, world: int, store_path: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_path}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),  # a hang fails the test instead
    )


SCENARIOS = {
    "resharded": Sharding(gpus=2, units=("layers.*",)),
    "layer-1-kept": Sharding(gpus=2, units=("layers.*",), keep_unsharded=("layers.1",)),
}


def every_scenario(rank: int, world: int, store_path: str, results: Any) -> None:
    """One job (starting ranks costs seconds): each of ``SCENARIOS``, then a failing rank."""
    _init(rank, world, store_path)
    try:
        for name, technique in SCENARIOS.items():
            results.put((rank, name, _attempt(sharded_training, rank, technique)))
        guarded = functools.partial(sharded_training, guarded=True)
        results.put((rank, "guarded", _attempt(guarded, rank, SCENARIOS["resharded"])))
        results.put((rank, "failing", _attempt(failing_rank, rank, SCENARIOS["resharded"])))
    finally:
        dist.destroy_process_group()


def _attempt(run: Any, rank: int, technique: Sharding) -> tuple:
    try:
        return ("ok", *run(rank, technique))
    except BaseException as error:  # reported to the test, which shows the traceback
        return ("error", type(error).__name__, str(error), traceback.format_exc())


def sharded_training(rank: int, technique: Sharding, guarded: bool = False) -> tuple:
    """Two steps of memfit.apply's sharded step (in ``memfit.OOMGuard`` if ``guarded``: its
    vote among the ranks beside FSDP2's collectives): losses, full weights, numbers of elements
    of this rank's shards and of its optimizer state."""
    model = tiny_llama()
    optimizer = make_optimizer(model.parameters())
    step: Any = memfit.apply([technique], model, optimizer, loss_fn=fp64_loss, precision="fp32")
    if guarded:
        step = memfit.OOMGuard(step)
    losses = []
    for batch in global_batches():
        mine = {k: v[rank * PER_RANK : (rank + 1) * PER_RANK] for k, v in batch.items()}
        losses.append(float(step(mine)))
    weights = {  # numpy: plain pickles through the queue
        n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().numpy()
        for n, p in model.named_parameters()
    }
    local = {
        n: (p.to_local() if isinstance(p, DTensor) else p).numel()
        for n, p in model.named_parameters()
    }
    state = sum(
        t.to_local().numel() if isinstance(t, DTensor) else t.numel()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor) and t.dim() > 0
    )
    return losses, weights, local, state


def failing_rank(rank: int, technique: Sharding) -> tuple:
    """Rank 1 is given a model whose blocks the plan's units do not name: it fails its check."""
    model = tiny_llama() if rank == 0 else torch.nn.Sequential(torch.nn.Linear(4, 4))
    memfit.apply([technique], model, make_optimizer(model.parameters()), precision="fp32")
    return ()
