"""Loaders for the paper's tokenizers: LDM/Stable-Diffusion vq-f8 and LlamaGen vq-ds8-c2i.

Weights cannot be downloaded at run time; point the loader at a local copy:

- SD vq-f8 (16384 codes × 4, f=8): the latent-diffusion first-stage model, published as
  https://ommer-lab.com/files/latent-diffusion/vq-f8.zip (unzip → ``model.ckpt``), or a
  diffusers-format folder (``config.json`` + weights) of the same model.
- LlamaGen vq-ds8-c2i (16384 codes × 8, L2-normalised, f=8): ``vq_ds8_c2i.pt`` from
  https://huggingface.co/FoundationVision/LlamaGen (``resolve/main/vq_ds8_c2i.pt``).
"""

from __future__ import annotations

import os

import torch

from ..artifacts import folder_digest, sha256_file
from ..safe_load import PRETRAINED_ALLOWLIST, load_torch_file
from .base import Tokenizer
from .convert import convert_taming_to_diffusers, load_into_vqmodel
from .vqmodel import load_pretrained

SD_HINT = (
    "download the latent-diffusion vq-f8 first-stage model from "
    "https://ommer-lab.com/files/latent-diffusion/vq-f8.zip and unzip it (model.ckpt), or pass "
    "a diffusers-format VQModel folder; then set tokenizer.path"
)
LLAMAGEN_HINT = (
    "download vq_ds8_c2i.pt from https://huggingface.co/FoundationVision/LlamaGen "
    "(resolve/main/vq_ds8_c2i.pt); then set tokenizer.path"
)


def _load_checkpoint(path: str) -> dict:
    """The state dict of a public checkpoint: weights_only, with the few extra objects such
    files carry (Lightning callbacks, training args) loaded as inert placeholders."""
    ckpt = load_torch_file(path, "tokenizer checkpoint", allow=PRETRAINED_ALLOWLIST)
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model", "ema"):
            if key in ckpt and isinstance(ckpt[key], dict):
                return ckpt[key]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path} holds no state dict (looked for 'state_dict', 'model', 'ema')")
    return ckpt


class SDVQF8(Tokenizer):
    backend = "sd-vq-f8"

    @classmethod
    def load(cls, path: str, image_size: int = 256) -> SDVQF8:
        if not path or not os.path.exists(path):
            raise FileNotFoundError(f"SD vq-f8 tokenizer not found at {path!r}: {SD_HINT}")
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise FileNotFoundError(f"{path} has no config.json: {SD_HINT}")
            vq = load_pretrained(path)
            sha = folder_digest(path)
        else:
            sd, config = convert_taming_to_diffusers(_load_checkpoint(path), "ldm")
            vq = load_into_vqmodel(sd, config, path)
            sha = sha256_file(path)
        return cls(vq, image_size, f"sd-vq-f8-{sha[:12]}", {"sha256": sha})


class LlamaGenVQ(Tokenizer):
    backend = "llamagen-vq-ds8"

    @classmethod
    def load(cls, path: str, image_size: int = 256) -> LlamaGenVQ:
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(f"LlamaGen tokenizer not found at {path!r}: {LLAMAGEN_HINT}")
        sd, config = convert_taming_to_diffusers(_load_checkpoint(path), "llamagen")
        vq = load_into_vqmodel(sd, config, path)
        sha = sha256_file(path)
        return cls(vq, image_size, f"llamagen-vq-ds8-{sha[:12]}", {"sha256": sha})
