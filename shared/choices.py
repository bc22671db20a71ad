"""The named choices of the shared components, without torch: the start-up checks
(``experiments/runner/checks.py``) refuse a config by them in a process that never imports
torch, and the components and commands read them here (one source)."""

TOKENIZER_BACKENDS = ("fashion-vq", "sd-vq-f8", "llamagen-vq-ds8")  # shared/tokenizers
DATASETS = ("fashion", "imagefolder")  # shared/data
POS_EMBEDS = ("sincos", "learned")  # shared/backbone/dit.py
PRECISIONS = ("auto", "fp32", "bf16")  # shared/precision.py; auto: bf16 on CUDA, fp32 on a CPU
LR_SCHEDULES = ("constant", "wsd")  # constant after warm-up, or warmup-stable-decay
