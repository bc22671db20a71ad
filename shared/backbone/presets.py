"""DiT preset names and sizes, without torch: the config schema and the start-up checks
(``experiments/runner/config.py``, ``checks.py``) read them in processes that build no model,
e.g. ``experiments/pack.py`` refusing a bad sweep before any job starts.

(hidden, depth, heads): Ti/S/B/L/XL as in DiT/DeiT; Nano is for smoke tests; Mini is a
CPU-sized model for Fashion-MNIST (192 wide, 6 deep, 4 heads: 4 heads ran ~6% faster than
6 on this CPU).
"""

SIZES = {
    "Nano": (64, 2, 2),  # smoke tests and CI: the whole pipeline in seconds
    "Mini": (192, 6, 4),
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}
PATCHES = {"Nano": (1,), "Mini": (1, 2)}  # every other size: patch 1, 2 and 4
PRESETS = tuple(f"DiT-{size}/{p}" for size in SIZES for p in PATCHES.get(size, (1, 2, 4)))
