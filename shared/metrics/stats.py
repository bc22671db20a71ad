"""The metric arithmetic on features: Fréchet distance, KID, precision/recall, IS.

Each function follows torch-fidelity 0.4.0 (``metric_fid``, ``metric_kid``, ``metric_prc``,
``metric_isc``) operation for operation, so the numbers are the same to the last bit
(``tests/shared/test_metrics.py`` compares them on random features). They live here so that a
training process, which scores every evaluation, does not import torch-fidelity: its
package imports torchvision and with it ``torch._dynamo``, ≈ 2 s per process on this CPU.

- **FD** (Heusel et al. 2017): ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 Σᵢ √λᵢ(Σ₁Σ₂), with Σ the
  unbiased sample covariance and λ the eigenvalues of Σ₁Σ₂ (square roots taken in ℂ, real
  part summed): torch-fidelity's form, which avoids ``scipy.linalg.sqrtm``.
- **KID** (Bińkowski et al. 2018): the unbiased MMD² under the cubic polynomial kernel
  k(x, y) = (xᵀy / d + 1)³, averaged over ``subsets`` random subsets of ``subset_size`` per
  side (drawn without replacement by ``np.random.RandomState(seed)``, first side then second);
  mean and population std over subsets.
- **Precision/recall** (Kynkäänniemi et al. 2019): a sample is inside a set's manifold when
  it lies within the distance of some member to that member's k-th nearest neighbour in its
  own set (k = 3, the member itself excluded). Precision: generated samples inside the real
  manifold; recall: real samples inside the generated one.
- **IS** (Salimans et al. 2016): logits shuffled by ``RandomState(seed)``, 10 splits,
  exp E[KL(p(y|x) ‖ p(y))] per split; mean and std over splits.
"""

from __future__ import annotations

import numpy as np
import torch


def fd_statistics(features: torch.Tensor) -> dict:
    """{'mu', 'sigma'} of (N, D) features (numpy, in the features' precision)."""
    if not torch.is_tensor(features) or features.dim() != 2:
        raise ValueError("features must be a 2-d tensor (N, D)")
    f = features.numpy()
    return {"mu": np.mean(f, axis=0), "sigma": np.cov(f, rowvar=False)}


def frechet_distance(stat_1: dict, stat_2: dict) -> float:
    mu1, s1, mu2, s2 = stat_1["mu"], stat_1["sigma"], stat_2["mu"], stat_2["sigma"]
    if np.shape(mu1) != np.shape(mu2) or np.shape(s1) != np.shape(s2):
        raise ValueError(f"statistics of different dimensions: {np.shape(mu1)} vs {np.shape(mu2)}")
    diff = mu1 - mu2
    root_eigs = np.sqrt(np.linalg.eigvals(s1.dot(s2)).astype("complex128"))
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.sum(root_eigs.real))


def _mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    m = k_xx.shape[0]
    off_xx = (k_xx.sum(axis=1) - np.diagonal(k_xx)).sum()
    off_yy = (k_yy.sum(axis=1) - np.diagonal(k_yy)).sum()
    return (off_xx + off_yy) / (m * (m - 1)) - 2 * k_xy.sum(axis=0).sum() / (m * m)


def kid(
    f1: torch.Tensor, f2: torch.Tensor, subset_size: int, subsets: int = 100, seed: int = 2020
) -> tuple[float, float]:
    """(mean, std) of the KID over random subsets."""
    n1, n2 = len(f1), len(f2)
    if min(n1, n2) < subset_size:
        raise ValueError(f"KID subset size {subset_size} is larger than a set ({n1}, {n2})")
    a, b = f1.cpu().numpy(), f2.cpu().numpy()
    gamma = 1.0 / a.shape[1]

    def kernel(x, y):
        return (np.matmul(x, y.T) * gamma + 1) ** 3

    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        x = a[rng.choice(n1, subset_size, replace=False)]
        y = b[rng.choice(n2, subset_size, replace=False)]
        mmds[i] = _mmd2_unbiased(kernel(x, x), kernel(x, y), kernel(y, y))
    return float(np.mean(mmds)), float(np.std(mmds))


def _cdist(a: torch.Tensor, b: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([torch.cdist(a, part).cpu() for part in b.split(batch)], dim=1)


def manifold_radii(members: torch.Tensor, k: int = 3, batch: int = 10000) -> torch.Tensor:
    """Each member's distance to its k-th nearest neighbour in its own set (itself excluded):
    the radii of the set's manifold. For a 60k reference set this is 3.6e9 distances, the
    bulk of an evaluation, so a reference's radii are cached with its features
    (``fidelity.reference_statistics``)."""
    return torch.cat(
        [_cdist(part, members, batch).kthvalue(k + 1).values for part in members.split(batch)]
    )


def _inside(
    queries: torch.Tensor,
    members: torch.Tensor,
    k: int,
    batch: int,
    radii: torch.Tensor | None = None,
) -> float:
    """Fraction of queries within some member's distance to its k-th neighbour (row by row
    over batches, as torch-fidelity's ``save_cpu_ram`` path)."""
    radii = manifold_radii(members, k, batch) if radii is None else radii
    hits = [
        (_cdist(part, members, batch) <= radii).any(dim=1).float() for part in queries.split(batch)
    ]
    return torch.cat(hits).mean().item()


def precision_recall(
    gen: torch.Tensor,
    real: torch.Tensor,
    k: int = 3,
    batch: int = 10000,
    real_radii: torch.Tensor | None = None,
) -> tuple[float, float]:
    """(precision, recall) of generated against real features; ``real_radii``: the real set's
    :func:`manifold_radii` at this k, when already known."""
    if len(gen) <= k or len(real) <= k:
        raise ValueError(
            f"precision/recall with k={k} needs more than {k} samples per set, got "
            f"{len(gen)} generated and {len(real)} real"
        )
    recall = _inside(real, gen, k, batch)
    precision = _inside(gen, real, k, batch, real_radii)
    return precision, recall


def inception_score(
    logits: torch.Tensor, splits: int = 10, seed: int = 2020
) -> tuple[float, float]:
    n = len(logits)
    logits = logits[np.random.RandomState(seed).permutation(n), :].double()
    p, log_p = logits.softmax(dim=1), logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(dim=0, keepdim=True)
        scores.append((p[lo:hi] * (log_p[lo:hi] - q.log())).sum(dim=1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))
