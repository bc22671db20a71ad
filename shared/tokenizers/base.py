"""One tokenizer interface over a ``VQModel`` (diffusers' layout, ``vqmodel.py``), every backend.

    encode(images uint8 (B,C,h,w)) → indices (B,H,W)      nearest code of quant_conv(encoder(x))
    lookup(indices)                → z (B,d,H,W) = E[indices]
    quantize(z)                    → indices (nearest code, L2)
    decoder(z)                     → images float in [-1, 1]
    decode(indices)                → images uint8 = to_uint8(decoder(lookup(indices)))

``codebook`` (K, d) is exactly the table the decoder consumes. For LlamaGen it is the
L2-normalised table (normalised once at load time); with equal-norm codes the L2 nearest
neighbour equals LlamaGen's cosine nearest neighbour, so one ``quantize`` serves all.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..codebook import lookup, nearest_code


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (B,C,h,w) in [0,255], got {images.dtype}")
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255] (clamped, rounded)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class Tokenizer(nn.Module):
    """Base class; ``self.vq`` is a ``VQModel``, ``backend``/``tokenizer_id`` name it."""

    backend = ""

    def __init__(self, vq, image_size: int, tokenizer_id: str, info: dict | None = None):
        super().__init__()
        self.vq = vq.eval()
        self.image_size = image_size
        self.tokenizer_id = tokenizer_id
        self.info = dict(info or {})
        levels = len(vq.config.block_out_channels)
        self.downsample = 2 ** (levels - 1)
        if image_size % self.downsample:
            raise ValueError(f"image size {image_size} is not divisible by f={self.downsample}")

    @property
    def weights_sha256(self) -> str | None:
        """Identity of the weights this tokenizer was loaded from (a content hash)."""
        return self.info.get("sha256")

    @property
    def codebook(self) -> torch.Tensor:
        return self.vq.quantize.embedding.weight

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    @property
    def code_dim(self) -> int:
        return self.codebook.shape[1]

    @property
    def channels(self) -> int:
        return self.vq.config.in_channels

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size // self.downsample,) * 2

    def pre_quant(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images → continuous latents before quantisation (B, d, H, W)."""
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(
                f"expected images (B,{self.channels},{self.image_size},{self.image_size}), "
                f"got {tuple(images.shape)}"
            )
        return self.vq.encode(to_float(images).to(self.codebook.device))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.pre_quant(images))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        return nearest_code(z, self.codebook)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return lookup(self.codebook, indices)

    def decoder(self, z: torch.Tensor) -> torch.Tensor:
        return self.vq.decode(z)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        return to_uint8(self.decoder(self.lookup(indices)))
