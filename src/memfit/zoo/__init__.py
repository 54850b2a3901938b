"""Built-in model architectures, built from configs in plain PyTorch: no weights, no network.

Each entry builds its model, makes an example batch, and knows its parameter count::

    entry = memfit.zoo.get("gpt2")
    model = entry.build()
    batch = entry.make_batch(batch_size=4, seq_len=512)
    loss = model(**batch).loss

The config dataclasses live in the per-model modules (``memfit.zoo.gpt2.GPT2Config``,
``memfit.zoo.llama.LlamaConfig``, ``memfit.zoo.resnet.ResNetConfig``, ``memfit.zoo.vit.ViTConfig``,
``memfit.zoo.bert.BertConfig``) for building other sizes of the same architectures.
"""

from __future__ import annotations

from memfit.zoo.registry import ZooEntry, get, names

__all__ = ["ZooEntry", "get", "names"]
