"""The default tokenizer: a small VQ autoencoder trained here on Fashion-MNIST.

32×32×1 → 8×8 grid (f=4), K=256 codes of dimension 4 by default, a ``VQModel`` in diffusers'
layout (``vqmodel.py``) so it shares its code path with the SD vq-f8 backend.

Training: MSE reconstruction + codebook loss ‖sg(h) − e‖² + β‖h − sg(e)‖² (β=0.25,
van den Oord et al. 2017) with a straight-through estimator; the codebook is initialised
from encoder outputs and any code left unused for ``restart_every`` steps is restarted at a
random encoder output of the current batch, so no code stays dead.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..artifacts import folder_digest
from ..images import save_grid
from ..paths import cache_root, config_hash
from ..progress import progress_bar
from .base import Tokenizer, to_float
from .vqmodel import VQModel, load_pretrained


@dataclass
class FashionVQConfig:
    num_codes: int = 256
    code_dim: int = 4
    block_out_channels: tuple = (16, 32, 32)  # 3 levels → f=4 (sized for ~4 min on 2 cores)
    layers_per_block: int = 1
    image_size: int = 32
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    beta: float = 0.25
    restart_every: int = 50
    seed: int = 0
    data_root: str | None = field(default=None, metadata={"hash": False})

    def key(self) -> dict:
        d = asdict(self)
        d.pop("data_root")
        d["block_out_channels"] = list(d["block_out_channels"])
        return d


def build_vqmodel(cfg: FashionVQConfig) -> VQModel:
    levels = len(cfg.block_out_channels)
    return VQModel(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.code_dim,
        num_vq_embeddings=cfg.num_codes,
        vq_embed_dim=cfg.code_dim,
        norm_num_groups=min(32, min(cfg.block_out_channels)),
        sample_size=cfg.image_size,
    )


class FashionVQ(Tokenizer):
    backend = "fashion-vq"

    @classmethod
    def load(cls, path: str) -> FashionVQ:
        meta_path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(
                f"no trained Fashion-MNIST tokenizer at {path} (missing tokenizer.json); train "
                "one with `python experiments/train_tokenizer.py`"
            )
        with open(meta_path) as f:
            meta = json.load(f)
        vq = load_pretrained(os.path.join(path, "model"))
        meta["sha256"] = sha = folder_digest(os.path.join(path, "model"))  # the weights' identity
        # the id names the weights, not the config: a retrained tokenizer never shares index
        # shards (keyed by id) with another
        return cls(vq, meta["config"]["image_size"], f"fashion-vq-{sha[:12]}", meta)


def tokenizer_dir(cfg: FashionVQConfig) -> str:
    return str(cache_root() / "tokenizers" / f"fashion-vq-{config_hash(cfg.key())}")


@torch.no_grad()
def evaluate_reconstruction(tok: Tokenizer, images: torch.Tensor, batch: int = 500) -> dict:
    """PSNR (dB, on uint8 images), codebook usage and perplexity on a split."""
    counts = torch.zeros(tok.num_codes, dtype=torch.float64)
    psnrs = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        idx = tok.encode(x)
        counts += torch.bincount(idx.flatten(), minlength=tok.num_codes).double()
        rec = tok.decode(idx)
        mse = (rec.double() - x.double()).pow(2).flatten(1).mean(1) / 255.0**2
        psnrs.append(10 * torch.log10(1.0 / mse.clamp_min(1e-12)))
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {
        "psnr_db": round(torch.cat(psnrs).mean().item(), 3),
        "codebook_usage": round((counts > 0).double().mean().item(), 4),
        "perplexity": round(math.exp(entropy), 2),
        "n_images": len(images),
    }


def train_fashion_vq(cfg: FashionVQConfig, out_dir: str | None = None, progress=True) -> str:
    """Train, evaluate on the test split, save atomically; returns the directory."""
    from ..data import load_fashion_mnist

    out_dir = out_dir or tokenizer_dir(cfg)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    train, _ = load_fashion_mnist(cfg.data_root, "train", cfg.image_size)
    test, _ = load_fashion_mnist(cfg.data_root, "test", cfg.image_size)
    vq = build_vqmodel(cfg).train()
    emb = vq.quantize.embedding.weight
    opt = torch.optim.Adam(vq.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    used = torch.zeros(cfg.num_codes, dtype=torch.bool)
    t0 = time.time()
    bar = progress_bar(range(cfg.steps), desc="tokenizer", disable=not progress, unit="step")
    for step in bar:
        x = to_float(train[torch.randint(0, len(train), (cfg.batch_size,), generator=g)])
        h = vq.encode(x)  # (B, d, H, W)
        flat = h.permute(0, 2, 3, 1).reshape(-1, cfg.code_dim)
        if step == 0:  # data-dependent init: codes start on encoder outputs
            with torch.no_grad():
                emb.copy_(flat[torch.randperm(len(flat), generator=g)[: cfg.num_codes]])
        idx = torch.cdist(flat.detach(), emb.detach()).argmin(1)
        e = emb[idx]
        vq_loss = F.mse_loss(e, flat.detach()) + cfg.beta * F.mse_loss(flat, e.detach())
        zq = (flat + (e - flat).detach()).view(h.shape[0], h.shape[2], h.shape[3], -1)
        rec = vq.decoder(vq.post_quant_conv(zq.permute(0, 3, 1, 2)))
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        used[idx] = True
        if (step + 1) % cfg.restart_every == 0 and step + 1 < cfg.steps:
            dead = (~used).nonzero().flatten()
            if len(dead):
                with torch.no_grad():
                    pick = torch.randint(0, len(flat), (len(dead),), generator=g)
                    emb[dead] = flat[pick].detach() + 1e-3 * torch.randn(len(dead), cfg.code_dim)
            used.zero_()
            bar.set_postfix(rec=f"{rec_loss.item():.4f}", dead=len(dead))
    train_s = time.time() - t0
    cfg_key = cfg.key()
    tok = Tokenizer(vq.eval(), cfg.image_size, f"fashion-vq-{config_hash(cfg_key)}")
    metrics = evaluate_reconstruction(tok, test)
    meta = {
        "id": tok.tokenizer_id,
        "backend": FashionVQ.backend,
        "config": cfg_key,
        "test_metrics": metrics,
        "train_seconds": round(train_s, 1),
    }
    # save into a temporary sibling folder, then rename: a crash never leaves half a tokenizer
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-tokenizer-")
    try:
        vq.save_pretrained(os.path.join(tmp, "model"))
        meta["id"] = f"fashion-vq-{folder_digest(os.path.join(tmp, 'model'))[:12]}"
        with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
            json.dump(meta, f, indent=2)
        originals = test[:16]  # top row: test images, bottom row: their reconstructions
        save_grid(
            torch.cat([originals, tok.decode(tok.encode(originals))]),
            os.path.join(tmp, "reconstructions.png"),
            nrow=16,
        )
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# the recipe of each shipped tokenizer (experiments/build_artifacts.py --tokenizer NAME)
RECIPES = {
    "fashion-vq": FashionVQConfig(),
    "fashion-vq-k4096": FashionVQConfig(num_codes=4096),
}


def shipped_fashion_tokenizer(name: str = "fashion-vq") -> FashionVQ:
    """A shipped Fashion-MNIST tokenizer (checksums verified; never retrained): the default,
    or another of ``shared.artifacts.TOKENIZERS``."""
    from ..artifacts import shipped

    return FashionVQ.load(shipped(name))
