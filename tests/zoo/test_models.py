"""Tiny configs of every architecture: forward, loss, backward, masking and building blocks."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from memfit import zoo
from memfit.errors import InvalidInputError
from memfit.zoo import bert, gpt2, llama, resnet, vit
from memfit.zoo.attention import apply_rotary, rotary_tables
from memfit.zoo.output import ZooOutput, causal_lm_loss

TINY_GPT2 = gpt2.GPT2Config(vocab_size=97, max_seq_len=16, dim=32, n_layers=2, n_heads=4)
TINY_LLAMA = llama.LlamaConfig(
    vocab_size=101, max_seq_len=16, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48
)
TINY_BERT = bert.BertConfig(
    vocab_size=89, max_seq_len=16, dim=32, n_layers=2, n_heads=4, mlp_dim=64
)
TINY_RESNET = resnet.ResNetConfig(
    blocks_per_stage=(1, 2, 1, 1), base_width=4, num_classes=10, image_size=32
)
TINY_VIT = vit.ViTConfig(
    image_size=32, patch_size=8, dim=32, n_layers=2, n_heads=4, mlp_dim=64, num_classes=10
)

LMS = [(gpt2.GPT2, TINY_GPT2, gpt2.num_params), (llama.Llama, TINY_LLAMA, llama.num_params)]
LMS += [(bert.Bert, TINY_BERT, bert.num_params)]
VISION = [(resnet.ResNet, TINY_RESNET, resnet.num_params), (vit.ViT, TINY_VIT, vit.num_params)]


def _ids(config, batch=2, seq=12):
    return torch.randint(0, config.vocab_size, (batch, seq))


@pytest.mark.parametrize(("cls", "config", "count"), LMS + VISION)
def test_tiny_param_count_matches_formula(cls, config, count):
    model = cls(config)
    assert sum(p.numel() for p in model.parameters()) == count(config)


@pytest.mark.parametrize(("cls", "config", "_count"), LMS)
def test_lm_forward_loss_backward(cls, config, _count):
    torch.manual_seed(0)
    model = cls(config)
    ids = _ids(config)
    out = model(ids, labels=ids)
    assert isinstance(out, ZooOutput)
    assert out.logits.shape == (2, 12, config.vocab_size)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    # weights ~ N(0, 0.02) give nearly uniform predictions
    assert abs(out.loss.item() - math.log(config.vocab_size)) < 0.5
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model(ids).loss is None


@pytest.mark.parametrize(("cls", "config", "_count"), VISION)
def test_vision_forward_loss_backward(cls, config, _count):
    model = cls(config)
    pixels = torch.randn(2, 3, config.image_size, config.image_size)
    labels = torch.tensor([1, 7])
    out = model(pixels, labels=labels)
    assert out.logits.shape == (2, 10)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_output_is_frozen():
    out = ZooOutput(loss=None, logits=torch.zeros(1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.loss = torch.zeros(())


def test_causal_loss_shifts_by_one():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert torch.allclose(causal_lm_loss(logits, labels), manual)


def test_bert_loss_covers_every_position_and_skips_ignored():
    model = bert.Bert(TINY_BERT).eval()
    ids = _ids(TINY_BERT)
    labels = ids.clone()
    labels[:, 6:] = -100
    out = model(ids, labels=labels)
    manual = F.cross_entropy(out.logits[:, :6].reshape(-1, 89), ids[:, :6].reshape(-1))
    assert torch.allclose(out.loss, manual)


def test_loss_dtype_follows_reference_implementations():
    ids = _ids(TINY_GPT2, seq=8)
    assert gpt2.GPT2(TINY_GPT2).to(torch.bfloat16)(ids, ids).loss.dtype == torch.bfloat16
    ids = _ids(TINY_LLAMA, seq=8)
    out = llama.Llama(TINY_LLAMA).to(torch.bfloat16)(ids, ids)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32


@pytest.mark.parametrize(("cls", "config"), [(gpt2.GPT2, TINY_GPT2), (llama.Llama, TINY_LLAMA)])
def test_causal_models_do_not_see_the_future(cls, config):
    model = cls(config).eval()
    ids = _ids(config, batch=1)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % config.vocab_size
    a, b = model(ids).logits, model(changed).logits
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_bert_attention_mask_hides_padding():
    model = bert.Bert(TINY_BERT).eval()
    ids = _ids(TINY_BERT, batch=1)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % TINY_BERT.vocab_size
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    a, b = model(ids, attention_mask=mask).logits, model(changed, attention_mask=mask).logits
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)
    # without the mask BERT is bidirectional: the last token moves every position
    assert not torch.allclose(model(ids).logits[:, 0], model(changed).logits[:, 0])


@pytest.mark.parametrize(
    ("cls", "config", "causal", "attn_dropout"),
    [
        (gpt2.GPT2, TINY_GPT2, True, 0.1),
        (llama.Llama, TINY_LLAMA, True, 0.0),
        (bert.Bert, TINY_BERT, False, 0.1),
        (vit.ViT, TINY_VIT, False, 0.0),
    ],
)
def test_attention_goes_through_sdpa(monkeypatch, cls, config, causal, attn_dropout):
    model = cls(config)
    inputs = torch.randn(1, 3, 32, 32) if cls is vit.ViT else _ids(config)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model.train()(inputs)
    model.eval()(inputs)
    n_layers = config.n_layers
    assert len(calls) == 2 * n_layers
    assert all(c["is_causal"] is causal for c in calls)
    assert [c["dropout_p"] for c in calls] == [attn_dropout] * n_layers + [0.0] * n_layers


def test_llama_grouped_query_attention_shapes():
    attn = llama.Llama(TINY_LLAMA).layers[0].attn
    assert attn.k_proj.weight.shape == (2 * 8, 32)  # n_kv_heads * head_dim
    assert attn.q_proj.weight.shape == (32, 32)


def test_rms_norm_fallback_matches_torch(monkeypatch):
    norm = llama.RMSNorm(8, eps=1e-5)
    nn.init.normal_(norm.weight)
    x = torch.randn(3, 8)
    fused = norm(x)
    monkeypatch.setattr(llama, "_rms_norm", None)
    assert torch.allclose(norm(x), fused, atol=1e-6)
    assert torch.allclose(llama.rms_norm_reference(x, norm.weight, 1e-5), fused, atol=1e-6)


def test_rotary_keeps_norms_and_leaves_position_zero():
    cos, sin = rotary_tables(5, 8, theta=10000.0, device=torch.device("cpu"))
    x = torch.randn(1, 2, 5, 8)
    y = apply_rotary(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(y[:, :, 0], x[:, :, 0])


def test_rotary_scores_depend_on_relative_position():
    cos, sin = rotary_tables(6, 8, theta=10000.0, device=torch.device("cpu"))
    q, k = torch.randn(8), torch.randn(8)
    rot = apply_rotary(torch.stack([q, k]).expand(6, 2, 8).transpose(0, 1)[None], cos, sin)[0]
    # score(q at m, k at n) depends only on m - n
    assert torch.allclose(rot[0, 3] @ rot[1, 1], rot[0, 5] @ rot[1, 3], atol=1e-5)


def test_resnet_is_v1_5_with_inplace_relu():
    with torch.device("meta"):
        model = resnet.ResNet(resnet.ResNetConfig())
    first = model.stages[1][0]
    assert first.reduce[0].stride == (1, 1) and first.conv[0].stride == (2, 2)
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


def test_no_dropout_modules_when_probability_is_zero():
    model = vit.ViT(TINY_VIT)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert not any(isinstance(m, nn.Dropout) for m in llama.Llama(TINY_LLAMA).modules())


def test_tied_heads_share_storage():
    g = gpt2.GPT2(TINY_GPT2)
    b = bert.Bert(TINY_BERT)
    assert g.lm_head.weight is g.wte.weight
    assert b.decoder.weight is b.word_embed.weight
    assert b.decoder.bias.shape == (TINY_BERT.vocab_size,)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: gpt2.GPT2Config(dim=30, n_heads=4), ["dim=30", "n_heads=4"]),
        (lambda: llama.LlamaConfig(n_kv_heads=3), ["n_kv_heads=3", "divisors of n_heads"]),
        (lambda: vit.ViTConfig(image_size=230), ["image_size=230", "patch_size=16"]),
        (lambda: bert.BertConfig(n_heads=0), ["n_heads=0"]),
    ],
)
def test_bad_configs_name_the_value_and_fix(make, words):
    with pytest.raises(InvalidInputError) as info:
        make()
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("name", zoo.names())
def test_build_under_fake_tensors(name):
    with FakeTensorMode():
        model = zoo.get(name).build()
    assert all(isinstance(p, FakeTensor) for p in model.parameters())


@pytest.mark.slow
def test_full_size_step_under_fake_tensors():
    entry = zoo.get("gpt2-medium")
    with FakeTensorMode():
        model = entry.build()
        batch = entry.make_batch(1, 64)
        out = model(**batch)
        out.loss.backward()
    assert isinstance(out.loss, FakeTensor)
    assert out.logits.shape == (1, 64, 50257)
    assert model.wte.weight.grad is not None


@pytest.mark.parametrize("name", zoo.names())
def test_default_batch_on_meta_device(name):
    entry = zoo.get(name)
    with torch.device("meta"):
        out = entry.build()(**entry.make_batch())
    b = entry.default_batch_size
    if entry.family == "vision":
        assert out.logits.shape == (b, 1000)
    else:
        assert out.logits.shape[:2] == (b, entry.default_seq_len)
    assert out.loss.shape == ()
