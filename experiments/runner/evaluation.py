"""Evaluation under a fixed protocol, and the metrics file it fills.

Every evaluation samples ``eval.num_samples`` class-balanced images with the EMA weights,
from the same noise (``eval.seed``) for every method and step, decodes them with the
tokenizer and scores them against cached reference features (``shared/metrics``).
``metrics.csv`` gets one row per evaluation (:data:`METRIC_COLUMNS`), rewritten atomically.
"""

from __future__ import annotations

import json
import os
import time

import torch

from shared import precision
from shared.images import pick_by_class, save_grid
from shared.io import atomic_write_text
from shared.paths import cache_root, config_hash

from .build import solver_kwargs, solver_options
from .labels import method_label
from .metrics_file import METRIC_COLUMNS, read_csv, write_csv

__all__ = ["METRIC_COLUMNS", "Evaluator", "read_csv", "write_csv"]


def eval_seed(cfg) -> int:
    """The sampling noise seed of a run's evaluations: ``eval.seed`` (the same noise for every
    method and step), or with ``eval.seed=null`` one of the run's own, drawn from its training
    seed, so that the spread over training seeds includes the sampling noise."""
    if cfg.eval.seed is not None:
        return int(cfg.eval.seed)
    from methods.noise import sample_seed

    return sample_seed(int(cfg.seed), 0, stream="eval")


class Evaluator:
    """Samples with the EMA model under a fixed protocol and scores them (rank 0).

    ``identity`` names what produced every row (tokenizer weights, metric network, reference
    images); ``baselines`` are what real images (``fd_real``) and the tokenizer's
    reconstructions of real images (``fd_recon``: a perfect generator seen through this
    tokenizer) score under the same protocol, with the same number of samples.
    """

    def __init__(self, cfg, tok, method, device, run_dir, train_precision=None):
        from shared.metrics import build_extractor, load_classifier, reference_features

        self.cfg = cfg
        self.tok = tok
        self.method = method
        self.device = device
        self.run_dir = run_dir
        self.train_precision = train_precision
        # of sampling; configs stored before the key existed sampled in fp32
        self.precision = precision.resolve(cfg.eval.get("precision", "fp32"), device.type)
        e = cfg.eval
        self.dataset = (
            "fashion-mnist" if cfg.data.dataset == "fashion" else f"imagefolder:{cfg.data.root}"
        )
        net = load_classifier(e.metric_net) if e.extractor == "fashion" and e.metric_net else None
        self.extractor = build_extractor(e.extractor, device, net=net)
        self.reference = reference_features(
            e.extractor,
            self.dataset,
            split=e.reference_split,
            size=tok.image_size,
            n=e.reference_n,
            data_root=cfg.data.root,
            extractor=self.extractor,
            progress=cfg.progress,
        )
        self.identity = {
            "tokenizer_sha256": (tok.weights_sha256 or "unknown")[:16],
            "metric_net_sha256": self.extractor.sha256[:16],
            "reference": f"{self.dataset.split(':')[0]}/{e.reference_split} n={e.reference_n}",
            "reference_sha256": self.reference["images_sha256"][:16],
        }
        self.baselines = self.compute_baselines()
        self.last_grid = None

    def comparability_warnings(self) -> list[str]:
        """Loud lines when a Fashion run measures with rebuilt (not shipped) artifacts."""
        from shared.artifacts import METRIC_NET, TOKENIZERS, not_comparable_warning

        if self.cfg.data.dataset != "fashion":
            return []
        found = [not_comparable_warning("tokenizer", self.tok.weights_sha256 or "", TOKENIZERS)]
        if self.cfg.eval.extractor == "fashion":
            found.append(
                not_comparable_warning("fd_fashion network", self.extractor.sha256, METRIC_NET)
            )
        return [w for w in found if w]

    @torch.no_grad()
    def compute_baselines(self) -> dict:
        """FD of held-out real images and of their reconstructions, at n = eval.num_samples
        (cached per identity): the floor of the curves and this tokenizer's ceiling."""
        from shared.metrics import compute_metrics
        from shared.metrics.fidelity import FD_KEY, held_out_images

        e = self.cfg.eval
        key = {**self.identity, "n": e.num_samples, "split": e.reference_split}
        path = cache_root() / "metrics" / "baselines" / f"{config_hash(key)}.json"
        if path.is_file():
            with open(path) as f:
                return json.load(f)
        out = {"fd_real": None, "fd_recon": None}
        real = None
        if e.reference_n is not None:
            real = held_out_images(
                self.dataset,
                e.reference_split,
                self.tok.image_size,
                e.reference_n,
                e.num_samples,
                data_root=self.cfg.data.root,
            )
        if real is not None:
            fd = FD_KEY[e.extractor]
            recon = torch.cat(
                [
                    self.tok.decode(self.tok.encode(real[i : i + e.batch_size])).cpu()
                    for i in range(0, len(real), e.batch_size)
                ]
            )
            for name, images in (("fd_real", real), ("fd_recon", recon)):
                m = compute_metrics(images, self.reference, self.extractor, which=("fd",))
                out[name] = m[fd]
        atomic_write_text(path, json.dumps(out))
        return out

    @torch.no_grad()
    def sample_images(self, ema, temperature=None, cfg_scale=None, trace=False, **solver_kw):
        """The protocol's class-balanced samples as uint8 images (and the last SampleOutput).

        ``solver_kw`` goes to the sampler (e.g. ``tolerance`` for dopri5); the model calls of
        every batch are kept in ``self.batch_nfe`` (an adaptive solver's differ by batch)."""
        e = self.cfg.eval
        self.batch_nfe = []
        g = torch.Generator(self.device).manual_seed(eval_seed(self.cfg))
        labels = torch.arange(e.num_samples, device=self.device) % self.cfg.data.num_classes
        images = []
        for i in range(0, e.num_samples, e.batch_size):
            y = labels[i : i + e.batch_size]
            with precision.autocast(self.device.type, self.precision):
                out = self.method.sample(
                    ema,
                    len(y),
                    self.tok.grid,
                    e.steps,
                    y=y,
                    solver=e.solver,
                    temperature=e.temperature if temperature is None else temperature,
                    cfg_scale=e.cfg_scale if cfg_scale is None else cfg_scale,
                    generator=g,
                    trace=trace,
                    **solver_kwargs(
                        self.cfg.method.name, e.solver, solver_options(self.cfg, e.solver)
                    ),
                    **solver_kw,
                )
            self.batch_nfe.append((len(y), out.nfe, out.nfe_rows))
            images.append(self.tok.decode(out.indices).cpu())
        return torch.cat(images), labels.cpu(), out

    def save_grid(self, images, labels, path):
        """One row per class (at most 16 classes, evenly spaced), about grid_samples images in
        all; the PNG's "classes" text names the row classes."""
        rows = min(16, len(torch.unique(labels)))
        per = max(1, min(16, self.cfg.eval.grid_samples // rows))
        idx, classes, per = pick_by_class(labels, max_classes=rows, per_class=per)
        save_grid(images[idx], path, nrow=per, text={"classes": " ".join(map(str, classes))})

    def score(self, images) -> dict:
        from shared.metrics import compute_metrics

        return compute_metrics(images, self.reference, self.extractor)

    @torch.no_grad()
    def __call__(self, ema, step, total_steps, batch, flops_per_step, wall_s, loss) -> dict:
        e, t0 = self.cfg.eval, time.time()
        images, labels, out = self.sample_images(ema)
        grid_path = os.path.join(self.run_dir, "samples", f"step_{step:07d}.png")
        self.save_grid(images, labels, grid_path)
        self.last_grid = grid_path
        m = self.score(images)
        nfe, rows = out.nfe, out.nfe_rows
        kind = e.extractor
        return {
            "method": method_label(self.cfg),
            "seed": self.cfg.seed,
            "step": step,
            "total_steps": total_steps,
            "images_seen": step * batch,
            "train_flops": step * flops_per_step,
            "budget_fraction": step / total_steps,
            "wall_s": round(wall_s, 3),
            "loss": loss,
            "fd_fashion": m.get("fd_fashion"),
            "fid_inception": m.get("fid_inception"),
            "kid": m.get(f"kid_{kind}"),
            "kid_std": m.get(f"kid_{kind}_std"),
            "precision": m.get(f"precision_{kind}"),
            "recall": m.get(f"recall_{kind}"),
            "inception_score": m.get(f"is_{kind}"),
            "nfe": nfe,
            "nfe_rows": rows,
            "sample_steps": e.steps,
            "solver": e.solver,
            "temperature": e.temperature,
            "cfg_scale": e.cfg_scale,
            "num_samples": e.num_samples,
            "extractor": kind,
            "eval_s": round(time.time() - t0, 2),
            **self.baselines,
            **self.identity,
            "train_precision": self.train_precision,
            "eval_precision": self.precision,
        }

    def describe(self, row) -> str:
        fd = row["fd_fashion"] if row["fd_fashion"] is not None else row["fid_inception"]
        return (
            f"[eval] {row['method']} step {row['step']}/{row['total_steps']}: loss "
            f"{row['loss']:.4f}, FD {fd:.3f}, precision {row['precision']:.3f}, recall "
            f"{row['recall']:.3f} ({row['eval_s']:.1f} s)"
        )
