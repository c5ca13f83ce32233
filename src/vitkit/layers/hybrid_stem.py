"""The hybrid CNN-ViT's stem (Dosovitskiy et al. 2020, R50+ViT-B/16): a ResNet-v2 whose feature map is cut
into P×P patches (P = 1 for the paper's hybrids) and projected to the width.

The CNN is the one of the paper's code and of timm's ``vision_transformer_hybrid``: weight-standardised
convolutions with TensorFlow's "same" padding (asymmetric, more on the bottom/right), GroupNorm with 32
groups (eps 1e-5), a 7×7/2 conv + 3×3/2 max pool root, then stages of post-activation bottleneck blocks
(1×1, 3×3 with the stride, 1×1 at 4× the inner width; a 1×1 projection shortcut in each stage's first block).
Stage 1 keeps the stride, every later one halves it. Names follow timm's state dict:
``patch_embed.backbone.stem.{conv,norm}``, ``patch_embed.backbone.stages.N.blocks.M.{conv1..3,norm1..3,
downsample.conv,downsample.norm}``; a stem without stages is the backbone itself (``patch_embed.backbone.conv``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ViTConfig
from .patch_embed import PatchEmbed

WS_EPS = 1e-8  # weight standardisation's eps in the hybrids (timm: StdConv2dSame(eps=1e-8))
GN_EPS = 1e-5
GN_GROUPS = 32


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's "same" padding: ceil(size / stride) outputs, the odd pixel of padding on the bottom/right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class StdConv2dSame(nn.Conv2d):
    """A bias-free conv whose kernel is standardised per output channel, (w - mean) / sqrt(var + eps), before
    use (Qiao et al. 2019), with "same" padding."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, correction=0)
        w = (w - mean) * torch.rsqrt(var + WS_EPS)
        return F.conv2d(pad_same(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm(32), then ReLU unless ``act=False``."""

    def __init__(self, channels: int, act: bool = True):
        super().__init__(GN_GROUPS, channels, eps=GN_EPS)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(x) if self.act else x


class RootStem(nn.Module):
    """7×7/2 conv, GroupNorm + ReLU, 3×3/2 max pool ("same": padded with -inf)."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.conv = StdConv2dSame(cin, width, 7, stride=2)
        self.norm = GroupNormAct(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)


class Downsample(nn.Module):
    """The projection shortcut: 1×1 conv with the block's stride, GroupNorm without activation."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = StdConv2dSame(cin, cout, 1, stride=stride)
        self.norm = GroupNormAct(cout, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """ResNet-v1-style (post-activation) bottleneck: relu(x' + norm3(conv3(relu(norm2(conv2(relu(norm1(conv1(x)))))))))
    with x' the projection shortcut in a stage's first block."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, downsample: bool):
        super().__init__()
        self.downsample = Downsample(cin, cout, stride) if downsample else None
        self.conv1 = StdConv2dSame(cin, mid, 1)
        self.norm1 = GroupNormAct(mid)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride=stride)
        self.norm2 = GroupNormAct(mid)
        self.conv3 = StdConv2dSame(mid, cout, 1)
        self.norm3 = GroupNormAct(cout, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm2(self.conv2(self.norm1(self.conv1(x))))
        return F.relu(self.norm3(self.conv3(x)) + shortcut)


class Stage(nn.Module):
    def __init__(self, cin: int, width: int, depth: int, stride: int):
        super().__init__()
        mid, cout = width, 4 * width
        self.blocks = nn.Sequential(*(Bottleneck(cin if i == 0 else cout, mid, cout, stride if i == 0 else 1, i == 0)
                                      for i in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ResNetV2(nn.Module):
    """Root stem + stages: (B, C, H, W) -> (B, cfg.stem_channels, H / stride, W / stride)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        w = cfg.hybrid_width
        self.stem = RootStem(cfg.channels, w)
        cin, stages = w, []
        for i, depth in enumerate(cfg.hybrid_layers):
            stages.append(Stage(cin, w * 2 ** i, depth, 1 if i == 0 else 2))
            cin = 4 * w * 2 ** i
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class HybridEmbed(PatchEmbed):
    """PatchEmbed on the CNN's feature map: ``backbone`` (the ResNet, or the root stem alone without stages),
    then ``proj``, a P×P conv from the feature channels to the width. Inputs must be multiples of the token
    stride (patch × the CNN's stride), so that the grid is the feature map's."""

    def __init__(self, cfg: ViTConfig):
        super().__init__(cfg)
        self.patch_size = cfg.token_stride  # what check_input asks the input to be a multiple of
        self.backbone = ResNetV2(cfg) if cfg.hybrid_layers else RootStem(cfg.channels, cfg.hybrid_width)
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.stem_channels, cfg.width, kernel_size=p, stride=p, bias=cfg.patch_bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        self.check_input(x)
        x = self.proj(self.backbone(x))  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])
