"""A user's own 7M-parameter language model whose loss is one of the variants users write.

The issue's repro: an ``lm_head`` and a ``labels`` input, as Hugging Face's models have, but a
loss of its own (a z-loss, label smoothing, unshifted labels, a sum, an auxiliary term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM, SEQ = 9000, 256, 256
BATCH = f"input_ids=int64[8,{SEQ}]<{VOCAB} labels=int64[8,{SEQ}]<{VOCAB}"
LOSSES = ("ce", "z_loss", "smoothing", "unshifted", "sum", "aux")
Z_LOSS, SMOOTHING, AUX = 1e-4, 0.1, 0.01


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.up = nn.Linear(DIM, 4 * DIM)
        self.down = nn.Linear(4 * DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class OwnLossLM(nn.Module):
    """Embedding, four MLP blocks, a norm and an untied ``lm_head``: 6.7M parameters."""

    def __init__(self, loss: str = "ce") -> None:
        super().__init__()
        assert loss in LOSSES
        self.loss = loss
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(4))
        self.norm = nn.LayerNorm(DIM)
        self.router = nn.Linear(DIM, 4)  # an MoE-style router, for the auxiliary loss
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        logits = self.lm_head(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = self._loss(logits, labels, x)
        return out

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(logits.dtype, torch.float32)  # float32, float64 in tests
        if self.loss == "unshifted":
            return F.cross_entropy(logits.flatten(0, 1).to(wide), labels.flatten())
        z = logits[:, :-1].flatten(0, 1).to(wide)
        y = labels[:, 1:].flatten()
        if self.loss == "sum":
            return F.cross_entropy(z, y, reduction="sum")
        if self.loss == "smoothing":
            return F.cross_entropy(z, y, label_smoothing=SMOOTHING)
        loss = F.cross_entropy(z, y)
        if self.loss == "z_loss":
            loss = loss + Z_LOSS * torch.logsumexp(z, dim=-1).square().mean()
        if self.loss == "aux":  # load balancing: the router's mean probability per expert
            balance = self.router(x).softmax(-1).mean(dim=(0, 1))
            loss = loss + AUX * 4 * balance.square().sum()
        return loss


def build(loss: str = "ce") -> OwnLossLM:
    torch.manual_seed(0)
    return OwnLossLM(loss)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (8, SEQ), generator=generator)
    labels = ids.clone()
    labels[1, :5] = -100  # a prompt left out of the loss
    return {"input_ids": ids, "labels": labels}
