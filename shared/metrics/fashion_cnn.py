"""A small Fashion-MNIST classifier used as a fast in-domain feature extractor.

Inception FID costs ≈3 images/s on this CPU, far too slow for convergence curves. This
CNN (trained here, cached) gives 128-d penultimate features for a Fréchet distance,
KID and precision/recall, and 10 logits for an Inception-Score analogue. Results computed
with it are named ``*_fashion`` (``fd_fashion``), never FID.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as save_safetensors

from ..io import atomic_open, atomic_write_text
from ..paths import cache_root, config_hash
from ..progress import progress_bar
from ..safe_load import FileLoadError

EXTRACTOR_NAME = "fashion-cnn"


@dataclass
class FashionCNNConfig:
    widths: tuple = (16, 32, 64)
    feat_dim: int = 128
    epochs: int = 2
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0


class FashionCNN(nn.Module):
    def __init__(self, widths=(16, 32, 64), feat_dim=128, num_classes=10):
        super().__init__()
        layers, cin = [], 1
        for w in widths:  # each stage: two 3×3 convs + BN + ReLU, then 2×2 max-pool
            layers += [
                nn.Conv2d(cin, w, 3, padding=1),
                nn.BatchNorm2d(w),
                nn.ReLU(),
                nn.Conv2d(w, w, 3, padding=1),
                nn.BatchNorm2d(w),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            cin = w
        self.body = nn.Sequential(*layers)
        self.feat = nn.Linear(cin * (32 // 2 ** len(widths)) ** 2, feat_dim)
        self.head = nn.Linear(feat_dim, num_classes)

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 1|3, h, w) → float (B, 1, 32, 32) normalised to [-1, 1]."""
        x = x.float()
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if x.shape[-2:] != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
        return x / 127.5 - 1

    def forward(self, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.feat(self.body(self.prepare(x_uint8)).flatten(1))  # (B, feat_dim)
        return feat, self.head(F.relu(feat))  # features, logits


def classifier_dir(cfg: FashionCNNConfig) -> str:
    """Where ``train_classifier`` writes a rebuilt network (the cache; never the shipped one)."""
    d = asdict(cfg)
    d["widths"] = list(d["widths"])
    return str(cache_root() / "metrics" / f"fashion-cnn-{config_hash(d)}")


@torch.no_grad()
def test_accuracy(net: FashionCNN, data_root: str | None = None) -> float:
    """Accuracy on the 10k Fashion-MNIST test images (the number the manifest records)."""
    from ..data import load_fashion_mnist

    xt, yt = load_fashion_mnist(data_root, "test", 32)
    net.eval()
    pred = torch.cat([net(xt[i : i + 1000])[1].argmax(1) for i in range(0, len(xt), 1000)])
    return round((pred == yt).float().mean().item(), 4)


def train_classifier(
    cfg: FashionCNNConfig, data_root: str | None = None, progress=True, out: str | None = None
) -> str:
    """Train the network with its seeded recipe into ``out`` (default: the cache)."""
    from ..data import load_fashion_mnist

    out = out or classifier_dir(cfg)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x, y = load_fashion_mnist(data_root, "train", 32)
    net = FashionCNN(cfg.widths, cfg.feat_dim)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    steps = cfg.epochs * (len(x) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps)
    t0 = time.time()
    bar = progress_bar(total=steps, desc="fashion-cnn", unit="step", disable=not progress)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(len(x) // cfg.batch_size):
            b = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb = x[b]
            flip = torch.rand(len(b), generator=g) < 0.5  # horizontal flips: a cheap augmentation
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = F.cross_entropy(net(xb)[1], y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    meta = {
        "config": {**asdict(cfg), "widths": list(cfg.widths)},
        "test_accuracy": test_accuracy(net, data_root),
        "train_seconds": round(time.time() - t0, 1),
    }
    os.makedirs(out, exist_ok=True)
    with atomic_open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(save_safetensors({k: v.contiguous() for k, v in net.state_dict().items()}))
    atomic_write_text(os.path.join(out, "meta.json"), json.dumps(meta, indent=2))
    return out


def load_classifier(path: str | None = None) -> FashionCNN:
    """The ``fd_fashion`` network: the shipped one (checksums verified), or a rebuilt one at
    ``path``. ``net.sha256`` is the identity of its weights."""
    from ..artifacts import METRIC_NET, shipped, state_digest

    path = path or shipped(METRIC_NET)
    weights = os.path.join(path, "model.safetensors")
    if not os.path.isfile(weights) or not os.path.isfile(os.path.join(path, "meta.json")):
        raise FileNotFoundError(
            f"no Fashion-MNIST classifier at {path} (model.safetensors + meta.json); rebuild one "
            "with `python experiments/build_artifacts.py` or use the shipped one"
        )
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    cfg = meta["config"]
    net = FashionCNN(tuple(cfg["widths"]), cfg["feat_dim"])
    try:  # safetensors: tensors only, nothing to unpickle
        state = load_safetensors(weights)
    except Exception as e:
        raise FileLoadError(f"cannot read metric network {weights}: {e}") from None
    net.load_state_dict(state)
    net.meta = meta
    net.sha256 = state_digest(net)
    return net.eval()


class FashionFeatures(nn.Module):
    """The ``fd_fashion`` feature extractor: uint8 images → {'feat': (B, 128) for FD, KID and
    precision/recall, 'logits': (B, 10) for the IS analogue}. ``sha256`` names its weights."""

    kind, has_logits = "fashion", True

    def __init__(self, net: FashionCNN | None = None):
        super().__init__()
        self.net = net if net is not None else load_classifier()
        self.requires_grad_(False)
        self.eval()
        from ..artifacts import state_digest

        self.sha256 = state_digest(self.net)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat, logits = self.net(x)
        return {"feat": feat, "logits": logits}


def register_with_torch_fidelity() -> str:
    """Register the network with torch-fidelity as feature extractor ``fashion-cnn``, so that
    ``torch_fidelity.calculate_metrics(..., feature_extractor="fashion-cnn",
    feature_layer_fid="feat")`` measures with it; returns that name. Our own scoring never
    goes through torch-fidelity (see ``stats.py``), so its import is paid only here."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    class FeatureExtractorFashionCNN(FeatureExtractorBase):
        """torch-fidelity wrapper: features 'feat' (FD/KID/PRC) and 'logits_unbiased' (IS)."""

        def __init__(self, name, features_list, net: FashionCNN | None = None, **kwargs):
            super().__init__(name, features_list)
            self.net = net if net is not None else load_classifier()

        @staticmethod
        def get_provided_features_list():
            return "feat", "logits_unbiased"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits_unbiased"}.get(metric, "feat")

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 1, 32, 32, dtype=torch.uint8)

        def forward(self, x):
            feat, logits = self.net(x)
            out = {"feat": feat, "logits_unbiased": logits}
            return tuple(out[f] for f in self.features_list)

    if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EXTRACTOR_NAME, FeatureExtractorFashionCNN)
    return EXTRACTOR_NAME
