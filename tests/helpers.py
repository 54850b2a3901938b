"""Tiny models, a training step and a live-storage tracker for the apply, step, structure tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from memfit.step.batch import call_model
from memfit.step.context import ApplyContext
from memfit.step.loss import compute_loss

VOCAB = 97
"""A prime vocabulary, so that no other dimension of the test models equals it."""


def tiny_gpt2(*, dropout: float = 0.0) -> nn.Module:
    from memfit.zoo.gpt2 import GPT2, GPT2Config

    torch.manual_seed(0)
    config = GPT2Config(
        n_layers=2,
        dim=32,
        n_heads=4,
        vocab_size=VOCAB,
        max_seq_len=16,
        dropout=dropout,
        attn_dropout=dropout,
    )
    return GPT2(config).double().train()


def tiny_llama() -> nn.Module:
    from memfit.zoo.llama import Llama, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        n_layers=2,
        dim=32,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=64,
        vocab_size=VOCAB,
        max_seq_len=16,
    )
    return Llama(config).double().train()


def hf_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config).double().train()


def hf_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).double().train()


def hf_bart_lm() -> nn.Module:
    """BART's decoder as a causal LM: its forward takes ``CrossEntropyLoss()`` of unshifted
    labels itself (a mean that ignores ``num_items_in_batch``), not ``self.loss_function``."""
    from transformers import BartConfig, BartForCausalLM

    torch.manual_seed(0)
    config = BartConfig(
        decoder_layers=2,
        d_model=32,
        decoder_ffn_dim=64,
        decoder_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=16,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=0,
        forced_eos_token_id=None,
    )
    return BartForCausalLM(config).double().train()


def token_batch(batch_size: int = 2, seq_len: int = 12, *, ignore: bool = True) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (batch_size, seq_len), generator=generator)
    labels = ids.clone()
    if ignore:  # some positions left out of the loss, as padding or prompts are
        labels[0, 3:6] = -100
        labels[-1, -2:] = -100
    return {"input_ids": ids, "labels": labels}


class Block(nn.Module):
    """``x + fc2(gelu(fc1(ln(x))))`` on ``[N, d]`` inputs (so that linears run aten.addmm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor, *, scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self.fc2(F.gelu(self.fc1(self.ln(x))))
        return x + (y if scale is None else y * scale)


class Net(nn.Module):
    """Blocks in a ModuleList, then a linear head; ``loss`` is the mean square of the output."""

    def __init__(self, dim: int = 8, n_blocks: int = 2, out: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(Block(dim) for _ in range(n_blocks))
        self.head = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, scale=scale)
        return self.head(x)


def loss_and_grads(
    model: nn.Module, batch: Any, context: ApplyContext | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward and backward as the TrainStep runs it; the loss and every gradient."""
    context = context or ApplyContext()
    model.zero_grad(set_to_none=True)
    output = call_model(model, context.model_inputs(batch))
    loss = compute_loss(context.loss_fn, output, batch)
    del output
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def assert_same_grads(
    expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], *, exact: bool
) -> None:
    assert expected.keys() == actual.keys()
    for name, grad in expected.items():
        if exact:
            assert torch.equal(grad, actual[name]), name
        else:
            torch.testing.assert_close(actual[name], grad, rtol=1e-10, atol=1e-12, msg=name)


@dataclass
class Storage:
    ref: StorageWeakRef
    numel: int
    op: str
    shape: tuple[int, ...]
    tag: str


class StorageTracker(TorchDispatchMode):
    """Records every storage an operator creates, with the operator and a caller-set tag.

    ``alive()`` lists those still allocated: what a step keeps in memory at that moment.
    ``peak(select)`` is the most elements of selected storages alive at once, checked after
    every operator.
    """

    def __init__(self, select: Any = None) -> None:
        super().__init__()
        self.storages: list[Storage] = []
        self.tag = ""
        self.select = select
        self.peak_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self.storages = self.alive()
        known = {s.ref.cdata for s in self.storages}
        for tensor in tree_leaves((args, kwargs)):  # views and in-place results are not new
            if isinstance(tensor, torch.Tensor):
                known.add(StorageWeakRef(tensor.untyped_storage()).cdata)
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            ref = StorageWeakRef(storage)
            if ref.cdata in known or storage.nbytes() == 0:
                continue
            known.add(ref.cdata)
            numel = storage.nbytes() // tensor.element_size()
            name = func.overloadpacket.__name__
            self.storages.append(Storage(ref, numel, name, tuple(tensor.shape), self.tag))
        if self.select is not None:
            live = sum(s.numel for s in self.alive() if self.select(s))
            self.peak_numel = max(self.peak_numel, live)
        return out

    def alive(self) -> list[Storage]:
        return [s for s in self.storages if not s.ref.expired()]


def price_host(monkeypatch: Any, **fields: float) -> None:
    """Make the tracer price with the default calibration and ``fields`` replaced (say
    ``offload_tensor_s=1.0``: a second a tensor, so that the step becomes the CPU's)."""
    import dataclasses

    import memfit.trace.step_phases as step_phases
    from memfit.cost.calibration import Calibration

    priced = dataclasses.replace(Calibration(), **fields)
    monkeypatch.setattr(step_phases, "load_calibration", lambda spec: priced)
