"""DiT preset names and sizes, without torch: the config schema and the start-up checks
(``experiments/runner/config.py``, ``checks.py``) read them in processes that build no model,
e.g. ``experiments/pack.py`` refusing a bad sweep before any job starts.

(hidden, depth, heads): Ti/S/B/L/XL as in DiT/DeiT; Nano, Micro and Mini are
sized for Fashion-MNIST on a CPU (Mini: 4 heads ran ~6% faster than 6 here).
"""

SIZES = {
    "Nano": (64, 2, 2),  # smoke tests and CI; the compute-optimal size at ~1e13 FLOPs here
    "Micro": (128, 4, 4),  # between Nano and Mini for the CPU compute frontier (~8x Nano)
    "Mini": (192, 6, 4),
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}
PATCHES = {"Nano": (1, 2), "Micro": (1, 2), "Mini": (1, 2)}  # every other size: patch 1, 2 and 4
PRESETS = tuple(f"DiT-{size}/{p}" for size in SIZES for p in PATCHES.get(size, (1, 2, 4)))
