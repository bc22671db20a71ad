"""The DiT's attention, MLP and patch embedding, in timm's parameter layout.

These are the three timm modules the DiT reference code (facebookresearch/DiT) uses:
``timm.models.vision_transformer.Attention``, ``timm.layers.Mlp`` and
``timm.layers.PatchEmbed``, with the settings the DiT uses (qkv bias, no q/k norm, no
dropout, fused attention, flattened NLC patches). They are written here because importing
timm costs a process ≈ 2 s on a CPU (timm → torchvision → torch._dynamo), paid by every
training, sampling and test process. The state-dict keys are timm's (``attn.qkv``,
``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, ``x_embedder.proj``), parameters are created in
timm's order (so a seeded model initialises to the same numbers), and the forward pass is
the same sequence of operations: ``tests/shared/test_backbone.py`` checks outputs and gradients
against timm bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, C): one qkv projection, SDPA, an output projection.
    ``fused_attn = False`` spells the attention out as matmuls (what a FLOP counter sees)."""

    fused_attn = True

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 → activation → fc2."""

    def __init__(self, in_features: int, hidden_features: int, act_layer=nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """(B, C, H, W) → (B, H·W/p², D): a p×p stride-p convolution, flattened row-major."""

    def __init__(
        self,
        img_size: tuple[int, int],
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        bias: bool = True,
    ):
        super().__init__()
        self.img_size = tuple(img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input grid {tuple(x.shape[-2:])} is not the model's {self.img_size}")
        return self.proj(x).flatten(2).transpose(1, 2)
