"""Child networks: CIFAR ResNets, Wide ResNets, a small digits ConvNet, torchvision classifiers,
small Transformers (``vit_tiny`` on image patches, ``transformer_lm`` on text:
`child_trainer.models_transformer`), and the MNIST-1D ConvNet and MLP (``mnist1d_cnn``,
``mnist1d_mlp``: `child_trainer.models_1d`); `build_model` builds any of them by name.

Module names follow torchvision (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``shortcut``; stages
``layer1``..``layer3``; block classes ending in ``Block``) so that ``search_space.find_sites``
finds BN outputs and residual-block outputs, and stage sharing can group sites by stage.
The Transformers declare AutoDropout's Transformer sites (``regularization_sites``): the
embedding output, and per block (``blocks.<i>``) the q/k/v projections, the attention output,
the feed-forward hidden activation and the feed-forward output.
"""

from __future__ import annotations

import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from search_space.errors import user_error

from .models_1d import MNIST1DCNN, MNIST1DMLP
from .models_transformer import FeedForward as FeedForward
from .models_transformer import PatchEmbed as PatchEmbed
from .models_transformer import SelfAttention as SelfAttention
from .models_transformer import TokenEmbed as TokenEmbed
from .models_transformer import TransformerLayer, TransformerLM, ViTTiny

__all__ = [
    "build_model",
    "model_names",
    "BasicBlock",
    "WideBasicBlock",
    "CifarResNet",
    "WideResNet",
    "DigitsCNN",
    "MNIST1DCNN",
    "MNIST1DMLP",
    "TransformerLayer",
    "ViTTiny",
    "TransformerLM",
    "LM_MODELS",
    "TRANSFORMER_MODELS",
    "is_lm",
]

LM_MODELS = ("transformer_lm",)
TRANSFORMER_MODELS = ("vit_tiny", *LM_MODELS)


def is_lm(name: str) -> bool:
    """True for language models (token ids in, next-token logits out)."""
    return name in LM_MODELS


def _init_weights(model: nn.Module) -> None:
    """He init for convs, unit BN, small linear: the standard CIFAR ResNet recipe."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Post-activation residual block (He et al. 2016): conv-bn-relu-conv-bn + shortcut, relu."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place ReLUs save an allocation each (~5% of a CPU step); autograd's version
        # checks would reject them if a regularizer at bn1 needed its output for backward.
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class WideBasicBlock(nn.Module):
    """Pre-activation wide block (Zagoruyko & Komodakis 2016): bn-relu-conv-bn-relu-conv + shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


def _stage(
    block: Callable[[int, int, int], nn.Module], in_planes: int, planes: int, n: int, stride: int
) -> nn.Sequential:
    return nn.Sequential(*[block(in_planes if i == 0 else planes, planes, stride if i == 0 else 1) for i in range(n)])


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: three stages of n blocks with 16/32/64 channels."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise user_error("model", f"resnet{depth}", "a CIFAR ResNet depth 6n+2, e.g. resnet20, resnet56")
        n = (depth - 2) // 6
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.layer1 = _stage(BasicBlock, w, w, n, 1)
        self.layer2 = _stage(BasicBlock, w, 2 * w, n, 2)
        self.layer3 = _stage(BasicBlock, 2 * w, 4 * w, n, 2)
        self.fc = nn.Linear(4 * w, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class WideResNet(nn.Module):
    """WRN-depth-k: three stages of (depth-4)/6 pre-activation blocks with 16k/32k/64k channels."""

    def __init__(self, depth: int, k: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10 or k < 1:
            raise user_error(
                "model", f"wrn{depth}_{k}", "a WRN depth 6n+4 and k >= 1, e.g. wrn28_10, wrn28_2, wrn16_4, wrn40_2"
            )
        n = (depth - 4) // 6
        widths = (16, 16 * k, 32 * k, 64 * k)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.layer1 = _stage(WideBasicBlock, widths[0], widths[1], n, 1)
        self.layer2 = _stage(WideBasicBlock, widths[1], widths[2], n, 2)
        self.layer3 = _stage(WideBasicBlock, widths[2], widths[3], n, 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = F.relu(self.bn1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DigitsCNN(nn.Module):
    """Small residual ConvNet for 8x8 digits: upsampled to 16x16 so block regularizers have room.

    Stem (16 ch, 16x16) -> layer1 (16 ch, 16x16) -> layer2 (32 ch, 8x8) -> pool -> fc. Width 16
    keeps the default recipe (>= 97% val) within seconds on one CPU core.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = _stage(BasicBlock, width, width, 1, 1)
        self.layer2 = _stage(BasicBlock, width, 2 * width, 1, 2)
        self.fc = nn.Linear(2 * width, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.upsample(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


_WRN = re.compile(r"^wrn(\d+)_(\d+)$")
_RESNET = re.compile(r"^resnet(\d+)$")
_CIFAR_RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


def model_names() -> list[str]:
    """Names accepted by build_model (patterns shown for the parametric families)."""
    return [
        "digits_cnn",
        "mnist1d_cnn",
        "mnist1d_mlp",
        *_CIFAR_RESNETS,
        *TRANSFORMER_MODELS,
        "wrn{depth}_{k} (e.g. wrn28_10, wrn28_2)",
        "tv:<torchvision classifier, e.g. tv:resnet18>",
        "package.module:factory (your own model, importable from the current folder)",
    ]


def user_model(spec: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """``package.module:factory`` (or ``file.py:factory``) -> ``factory(...)``, given the
    keyword arguments among num_classes, in_channels, image_size its signature accepts."""
    import inspect

    from .user_code import load_function

    factory = load_function(spec, "model")
    offered = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if takes_any or k in params}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise user_error(
            "model",
            spec,
            "a factory returning an nn.Module",
            detail=f"bad value {spec!r} (returned a {type(model).__name__})",
        )
    return model


def _torchvision_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """Any torchvision classifier, randomly initialised (never downloads weights)."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise user_error("model", f"tv:{name}", f"tv:<one of {', '.join(sorted(available))}>")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first 3-channel conv so grey-scale inputs (digits) work with any tv model."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                setattr(
                    parent,
                    child_name,
                    nn.Conv2d(
                        in_channels,
                        child.out_channels,
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        child.dilation,
                        child.groups,
                        child.bias is not None,
                        child.padding_mode,
                    ),
                )
                return
    raise user_error(
        "model",
        type(model).__name__,
        "a torchvision model with a 3-channel first convolution",
        detail=f"cannot adapt it to in_channels={in_channels}",
    )


def build_model(
    name: str, num_classes: int, in_channels: int = 3, image_size: int = 32, max_len: int = 256
) -> nn.Module:
    """Build a freshly initialised child network by name.

    ``name``: digits_cnn, mnist1d_cnn, mnist1d_mlp, resnet20/32/44/56/110 (CIFAR),
    wrn{depth}_{k}, vit_tiny, transformer_lm, tv:<torchvision name>, or package.module:factory
    (`user_model`). For ``transformer_lm`` ``num_classes`` is the vocabulary size and
    ``max_len`` the longest sequence; ``image_size`` sizes vit_tiny and is the sequence length
    of the MNIST-1D children.
    """
    if num_classes < 2:
        raise user_error("num_classes", num_classes, "an integer >= 2")
    if name == "vit_tiny":
        return ViTTiny(num_classes, in_channels, image_size)
    if name == "transformer_lm":
        return TransformerLM(num_classes, max_len)
    if name == "digits_cnn":
        return DigitsCNN(num_classes, in_channels)
    if name == "mnist1d_cnn":
        return MNIST1DCNN(num_classes, in_channels, image_size)
    if name == "mnist1d_mlp":
        return MNIST1DMLP(num_classes, in_channels * image_size)
    if name.startswith("tv:"):
        return _torchvision_model(name[3:], num_classes, in_channels)
    if ":" in name:
        return user_model(name, num_classes, in_channels, image_size)
    if name in _CIFAR_RESNETS:
        return CifarResNet(int(_RESNET.match(name).group(1)), num_classes, in_channels)
    match = _WRN.match(name)
    if match:
        return WideResNet(int(match.group(1)), int(match.group(2)), num_classes, in_channels)
    raise user_error("model", name, ", ".join(model_names()))
