"""Sample-quality metrics (torch-fidelity's arithmetic, stats.py): FID/KID/PRC/IS, in-domain and
Inception."""

from .fashion_cnn import FashionCNN, FashionCNNConfig, load_classifier, train_classifier
from .fidelity import (
    build_extractor,
    compute_metrics,
    extract_features,
    metrics_from_features,
    reference_features,
)
from .inception import inception_weights_path

__all__ = [
    "FashionCNN",
    "FashionCNNConfig",
    "load_classifier",
    "train_classifier",
    "build_extractor",
    "compute_metrics",
    "extract_features",
    "metrics_from_features",
    "reference_features",
    "inception_weights_path",
]
