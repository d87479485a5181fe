"""One parametrized test over every registered model, plus the registry and attention contracts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automl_factor import models
from automl_factor.models.attention import SelfAttention
from automl_factor.models.resnet import CifarResNet, resnet20


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _build(name: str, in_channels: int, size: int) -> nn.Module:
    kwargs: dict[str, object] = {"num_classes": 7, "in_channels": in_channels}
    if name == "vit":
        kwargs["image_size"] = size
    return models.create(name, **kwargs)


# 32x32 only where it stays cheap on two CPU cores; 8x8 (the digits) for every model.
_CHEAP_AT_32 = {"resnet20", "resnet32", "vgg19", "vit", "resnet32_lt"}
_CASES = [
    (name, in_channels, size)
    for name in models.list_models()
    for in_channels in (1, 3)
    for size in ((8, 32) if name in _CHEAP_AT_32 else (8,))
]


@pytest.mark.parametrize(("name", "in_channels", "size"), _CASES)
def test_every_model_builds_and_classifies(name: str, in_channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = _build(name, in_channels, size).eval()
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        out = model(x)
        out_channels_last = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out_channels_last, out, rtol=1e-4, atol=1e-4)
    assert model.default_dense_layers == ("stem", "fc")
    layers = dict(model.named_modules())
    assert isinstance(layers["stem"], nn.Conv2d) and layers["stem"].in_channels == in_channels
    assert isinstance(layers["fc"], nn.Linear) and layers["fc"].out_features == 7


def test_every_registered_model_is_covered() -> None:
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet32_lt", "vgg19", "vit"} <= set(
        models.list_models()
    )


def test_resnet_parameter_counts_match_the_published_ones() -> None:
    # Option A (zero-padding) shortcuts have no parameters: 269,722 is the exact count behind He et al.'s 0.27M.
    assert _param_count(models.create("resnet20")) == 269_722
    assert _param_count(models.create("resnet32")) == 464_154
    assert _param_count(models.create("resnet110")) == 1_727_962


def test_resnet20_shortcuts_are_parameter_free_and_lottery_ticket_ones_are_1x1_convs() -> None:
    narrow = dict(models.create("resnet20").named_modules())
    assert not any(name.endswith("shortcut.0") for name in narrow)
    wide = dict(models.create("resnet32_lt").named_modules())
    assert wide["layer1.0.shortcut"].__class__ is nn.Identity
    assert isinstance(wide["layer2.0.shortcut.0"], nn.Conv2d) and wide["layer2.0.shortcut.0"].kernel_size == (1, 1)
    assert isinstance(wide["layer3.0.shortcut.1"], nn.BatchNorm2d)
    assert [wide[f"layer{i}.0.conv1"].out_channels for i in (1, 2, 3)] == [64, 128, 256]


def test_resnet_init_is_kaiming_fan_out_with_unit_batch_norm() -> None:
    torch.manual_seed(0)
    model = models.create("resnet32_lt")
    conv = model.layer3[1].conv1
    expected_std = math.sqrt(2.0 / (conv.out_channels * 9))
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    assert torch.equal(model.layer3[1].bn1.weight, torch.ones(256))
    assert torch.equal(model.layer3[1].bn1.bias, torch.zeros(256))


def test_vit_names_its_layers_for_the_factorization() -> None:
    layers = dict(models.create("vit").named_modules())
    assert isinstance(layers["blocks.0.attn"], SelfAttention)
    assert isinstance(layers["blocks.0.mlp.fc1"], nn.Linear) and layers["blocks.0.mlp.fc1"].out_features == 384
    assert isinstance(layers["blocks.5.mlp.fc2"], nn.Linear) and "blocks.6.attn" not in layers
    assert layers["blocks.0.attn"].attn_dim == 192 and layers["blocks.0.attn"].num_heads == 3


def test_create_by_import_path() -> None:
    model = models.create("automl_factor.models.resnet:resnet20", num_classes=5)
    assert isinstance(model, CifarResNet) and model.fc.out_features == 5
    assert models.constructor("resnet20") is resnet20


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet18'; choose one of: .*resnet20.*vit.*module\.path:function"):
        models.create("resnet18")


def test_unimportable_model_path_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no_such_module"):
        models.create("no_such_module:net")
    with pytest.raises(ValueError, match="'nothing_here'"):
        models.create("automl_factor.models.resnet:nothing_here")


def test_registering_a_name_twice_is_refused() -> None:
    def resnet20() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="'resnet20' is already registered"):
        models.register_model(resnet20)


def test_bad_resnet_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="depth must be 6n \\+ 2"):
        CifarResNet(21, (16, 32, 64))
    with pytest.raises(ValueError, match="shortcut must be one of"):
        CifarResNet(20, (16, 32, 64), shortcut="projection")


# --- attention -----------------------------------------------------------------------------------


def _reference_attention(attn: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Attention written out with einsum, per head, independently of SelfAttention.forward."""
    heads, head_dim = attn.num_heads, attn.head_dim
    q = torch.einsum("bnd,ad->bna", x, attn.q.weight) + attn.q.bias
    k = torch.einsum("bnd,ad->bna", x, attn.k.weight) + attn.k.bias
    v = torch.einsum("bnd,ad->bna", x, attn.v.weight) + attn.v.bias
    outputs = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        scores = torch.einsum("bqe,bke->bqk", q[..., part], k[..., part]) / math.sqrt(head_dim)
        outputs.append(torch.einsum("bqk,bke->bqe", scores.softmax(dim=-1), v[..., part]))
    return torch.einsum("bna,da->bnd", torch.cat(outputs, dim=-1), attn.o.weight) + attn.o.bias


@pytest.mark.parametrize("attn_dim", [None, 24])
def test_self_attention_matches_an_einsum_reference(attn_dim: int | None) -> None:
    torch.manual_seed(0)
    attn = SelfAttention(dim=48, num_heads=3, attn_dim=attn_dim)
    x = torch.randn(2, 5, 48)
    assert attn.head_dim == (attn_dim or 48) // 3
    torch.testing.assert_close(attn(x), _reference_attention(attn, x), rtol=1e-5, atol=1e-5)


def test_self_attention_at_full_width_matches_torch_multi_head_attention() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(dim=32, num_heads=4)
    x = torch.randn(3, 6, 32)
    expected, _ = F.multi_head_attention_forward(
        x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), 32, 4,
        in_proj_weight=torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]),
        in_proj_bias=torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=attn.o.weight, out_proj_bias=attn.o.bias, need_weights=False,
    )
    torch.testing.assert_close(attn(x), expected.transpose(0, 1), rtol=1e-5, atol=1e-5)


def test_self_attention_shapes_and_validation() -> None:
    attn = SelfAttention(dim=64, num_heads=4, attn_dim=16, bias=False)
    assert attn.q.weight.shape == (16, 64) and attn.o.weight.shape == (64, 16) and attn.q.bias is None
    assert attn(torch.randn(2, 3, 64)).shape == (2, 3, 64)
    with pytest.raises(ValueError, match="attn_dim must be a positive multiple of num_heads=4, got 18"):
        SelfAttention(dim=64, num_heads=4, attn_dim=18)
