"""make_batch: shapes, dtypes, ranges, devices, fake tensors and bad sizes."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from memfit import zoo
from memfit.errors import InvalidInputError


@pytest.mark.parametrize("name", ["gpt2", "llama-1b", "bert-base"])
def test_token_batch(name):
    entry = zoo.get(name)
    batch = entry.make_batch(3, 17)
    assert set(batch) == {"input_ids", "labels"}
    ids = batch["input_ids"]
    assert ids.shape == (3, 17) and ids.dtype == torch.int64
    vocab = int(entry.input_spec(3, 17).split("<")[1].split()[0])
    assert 0 <= int(ids.min()) and int(ids.max()) < vocab
    assert batch["labels"] is ids


@pytest.mark.parametrize("name", ["resnet50", "vit-b16"])
def test_image_batch(name):
    batch = zoo.get(name).make_batch(2)
    assert set(batch) == {"pixel_values", "labels"}
    assert batch["pixel_values"].shape == (2, 3, 224, 224)
    assert batch["pixel_values"].dtype == torch.float32
    labels = batch["labels"]
    assert labels.shape == (2,) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) < 1000


@pytest.mark.parametrize("name", zoo.names())
def test_defaults_on_meta_device(name):
    entry = zoo.get(name)
    with torch.device("meta"):
        batch = entry.make_batch()
    lead = batch["labels"].shape[0]
    assert lead == entry.default_batch_size
    assert all(t.is_meta for t in batch.values())
    if entry.default_seq_len is not None:
        assert batch["input_ids"].shape == (lead, entry.default_seq_len)


def test_device_argument():
    batch = zoo.get("gpt2").make_batch(1, 4, device="meta")
    assert batch["input_ids"].is_meta


@pytest.mark.parametrize("name", zoo.names())
def test_fake_mode_returns_fake_tensors(name):
    entry = zoo.get(name)
    with FakeTensorMode():
        batch = entry.make_batch()
    assert all(isinstance(t, FakeTensor) for t in batch.values())


@pytest.mark.parametrize(
    ("batch_size", "seq_len", "words"),
    [
        (0, None, ["batch_size=0", "1 or more"]),
        (-2, None, ["batch_size=-2", "1 or more"]),
        (None, 0, ["seq_len=0", "1..1024"]),
        (None, 1025, ["seq_len=1025", "1..1024", "seq_len=1024 or less"]),
        (2.5, None, ["batch_size", "2.5", "integer"]),
        (True, None, ["batch_size", "True", "integer"]),
    ],
)
def test_bad_sizes_name_value_range_and_fix(batch_size, seq_len, words):
    entry = zoo.get("gpt2")
    for call in (entry.make_batch, entry.input_spec):
        with pytest.raises(InvalidInputError) as info:
            call(batch_size, seq_len)
        for word in words:
            assert word in str(info.value)


def test_llama_accepts_its_full_context_and_no_more():
    entry = zoo.get("llama-1b")
    assert entry.input_spec(1, 2048).startswith("input_ids=int64[1,2048]")
    with pytest.raises(InvalidInputError, match="2049"):
        entry.input_spec(1, 2049)


def test_vision_warns_that_seq_len_has_no_effect():
    with pytest.warns(UserWarning, match="seq_len=64 has no effect on resnet50"):
        spec = zoo.get("resnet50").input_spec(2, 64)
    assert spec.startswith("pixel_values=float32[2,3,224,224]")
