"""Structured configs for ``experiments/run.py`` (Hydra). Every group option is a dataclass,
so an unknown key or a wrongly typed value fails at start-up, naming the key.

Groups: method, backbone, tokenizer, data, budget, optim, eval, preset, hydra/launcher.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from methods.options import MethodOptions
from methods.records import records
from methods.records.dfm import MaskGITOptions

from .labels import method_label

# ----------------------------------------------------------------------------- method
# Each method's options dataclass is its record's (methods/records/): the one place its
# options, defaults and allowed values are written. The group's options are every record and
# every variant it names (method=dfm-uniform is dfm with source=uniform).
MethodConfig = MethodOptions


def method_nodes() -> dict:
    """{group option name: node}: each objective, and each of its variants by its label."""
    nodes = {}
    for rec in records().values():
        for label, overrides in rec.variant_names().items():
            nodes[label] = rec.options(**overrides) if overrides else rec.options
    return nodes


# --------------------------------------------------------------------------- backbone
@dataclass
class BackboneConfig:
    preset: str = "DiT-Nano/1"  # the default protocol's (config.yaml selects it as a group too)
    class_dropout: float = 0.1
    pos_embed: str = "sincos"


# -------------------------------------------------------------------- tokenizer, data
@dataclass
class TokenizerConfig:
    backend: str = "fashion-vq"  # fashion-vq | sd-vq-f8 | llamagen-vq-ds8
    path: str | None = None  # None: the cached Fashion tokenizer for the default config
    image_size: int = 32


@dataclass
class DataConfig:
    dataset: str = "fashion"  # fashion | imagefolder
    root: str | None = None  # None: /usr/share/datasets/fashion-mnist
    num_classes: int = 10
    latents_dir: str | None = None  # None: under the cache, keyed by tokenizer and dataset
    extract_if_missing: bool = True
    # the share of the training split a run trains on (a fixed subset, the same for every run:
    # shared/latents.py ShardSubset): below 1, the same compute repeats fewer images more often
    fraction: float = 1.0


# ------------------------------------------------------------------------------ budget
@dataclass
class BudgetConfig:
    """Exactly one of train_flops / images; steps per method follow from the FLOP count."""

    # the CPU protocol's budget: every method's mean FD gains < 10% over its last doubling on
    # DiT-Nano/1 (docs/frontier.md)
    train_flops: float | None = 8e13
    images: int | None = None
    batch_size: int = 64  # global batch (split across ranks)


# The ImageNet-256 presets' budgets. FLOP-matched by default, like the rest of the
# project: every method gets the training FLOPs that cfm spends on the presets' 400M images
# (1,562,500 steps at batch 256) on that backbone at a 32×32 grid. cfm's training FLOPs per
# image (shared/backbone/dit.py's analytic count, SD's 4-dim codes): 1.3801e11 on DiT-B/2,
# 4.8416e11 on DiT-L/2, 7.1170e11 on DiT-XL/2; LlamaGen's 8-dim codes add 0.03%
# (tests/runner/test_relaunch.py recomputes them). A K=16384 head costs more per image (purr/dfm
# over cfm: 1.56 on B/2, 1.21 on L/2, 1.16 on XL/2), so the categorical methods take fewer
# steps. `budget=imagenet_iters` is the paper's iteration-matched setting: 400M images for
# every method, whatever each step costs.
PAPER_IMAGES = 400_000_000
CFM_TRAIN_FLOPS_PER_IMAGE = {"b2": 1.3801e11, "l2": 4.8416e11, "xl2": 7.1170e11}
IMAGENET_BUDGETS = {
    **{
        f"imagenet_{b}": BudgetConfig(train_flops=PAPER_IMAGES * f, images=None, batch_size=256)
        for b, f in CFM_TRAIN_FLOPS_PER_IMAGE.items()
    },
    "imagenet_iters": BudgetConfig(train_flops=None, images=PAPER_IMAGES, batch_size=256),
}


@dataclass
class OptimConfig:
    # a number, or ${method_lr:}: the entry of lr_by_method for the run's objective (its
    # label: dfm-uniform, not dfm), so one launch over several objectives trains each at its
    # own tuned rate; optim.lr=X on the command line replaces the lookup
    lr: float = 1e-3
    lr_by_method: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    warmup_steps: int = 20
    # constant (after warm-up) | wsd: linear decay to zero over the last decay_fraction of the
    # budget, and a decay branch from the run for every earlier evaluation
    # (experiments/runner/train_loop.py)
    schedule: str = "constant"
    decay_fraction: float = 0.2
    ema_decay: float = 0.99
    ema_warmup: bool = True  # decay min(ema_decay, (1+n)/(10+n)), as torch_ema
    # auto: bf16 autocast where the device has native bf16 (CUDA; CPUs with avx512_bf16/amx),
    # fp32 elsewhere (shared/precision.py) | fp32 | bf16
    precision: str = "auto"
    fused: bool = True  # AdamW's single-kernel implementation (same update, fewer passes)


# -------------------------------------------------------------------------------- eval
@dataclass
class EvalConfig:
    # evaluations at these many compute fractions; log: at budget × 2^-k, so a run at a
    # smaller budget (make demo) evaluates at the same FLOPs as the full protocol
    points: int = 7
    spacing: str = "log"  # linear | log
    num_samples: int = 1000  # class-balanced labels
    steps: int = 20
    # euler | heun | midpoint (cfm, purr); euler (carry-over) | euler-redraw (the official
    # code's masked Euler, which redraws decoded tokens) | maskgit (dfm, masked source)
    solver: str = "euler"
    temperature: float = 1.0
    cfg_scale: float = 1.0
    extractor: str = "fashion"  # fashion (fd_fashion, fast) | inception (fid_inception)
    metric_net: str | None = None  # a rebuilt fd_fashion network's folder; None = the shipped one
    reference_split: str = "train"
    reference_n: int = 10000
    # sampling seed, the same for every method and evaluation; null: each run's own, drawn
    # from its training seed (the seed spread then includes the sampling noise)
    seed: int | None = 1234
    batch_size: int = 250
    # of sampling: fp32 (default; docs/performance.md) | bf16 (autocast) | auto (as optim)
    precision: str = "fp32"
    grid_samples: int = 100
    # eval.solver=maskgit (masked dfm): its unmasking schedule and confidence randomness
    maskgit: MaskGITOptions = field(default_factory=MaskGITOptions)


@dataclass
class RunConfig:
    method: MethodConfig = MISSING
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 10
    checkpoint_every: int = 100  # steps; also after every evaluation
    resume: bool = True
    # resume=false into a folder that holds a run, an unreadable checkpoint, or a finished
    # run whose checkpoint is gone: refused unless this says to train over it (docs/trust.md)
    overwrite: bool = False
    # training-config keys a relaunch may change on resume, e.g. [optim.lr] after a
    # non-finite stop; any other change to a training key is refused (runner/checkpoint.py)
    allow_changes: list[str] = field(default_factory=list)
    compile: bool = False
    # bitwise-repeatable CUDA runs (same seed → same numbers): deterministic kernels and a
    # fixed cuBLAS workspace; slower. CPU runs are repeatable without it.
    deterministic: bool = False
    progress: bool = True
    # redraw <sweep dir>/analysis/convergence.png after every evaluation (make demo sets it)
    live_figure: bool = False
    # the callable ("module:function", called as f(run_dir, row) -> message or None) that
    # live_figure runs; named, not imported, so that the runner never imports analysis/
    live_figure_hook: str = "analysis.convergence_plot:live_figure"
    # none, tensorboard (<run>/tensorboard/) or wandb (<run>/wandb/, offline unless WANDB_MODE
    # is set): every log line and evaluation, with the run's config (experiments/runner/tracking.py)
    logger: str = "none"
    wandb_project: str = "vqflow-bench"
    preset_name: str = "fashion_cpu"  # the default protocol; presets name theirs


IMAGENET_EVAL = EvalConfig(
    points=10,
    spacing="log",
    num_samples=10000,
    steps=100,
    extractor="inception",
    reference_n=50000,
    batch_size=125,
    grid_samples=64,
)


def method_lr(root) -> float:
    """``${method_lr:}``: the learning rate ``optim.lr_by_method`` gives the run's objective."""
    label = method_label(root, sampler=False)
    table = root.optim.lr_by_method
    if label not in table:
        listed = ", ".join(f"{k}={v:g}" for k, v in table.items()) or "nothing"
        raise ValueError(
            f"optim.lr is ${{method_lr:}}, but optim.lr_by_method has no rate for {label} (it "
            f"lists {listed}); set optim.lr=RATE, or +optim.lr_by_method.{label}=RATE"
        )
    return float(table[label])


def register_resolvers() -> None:
    """${method_label:} names a run folder as its results are grouped (dfm-mdlm, not dfm);
    ${method_lr:} gives each objective its tuned learning rate (OptimConfig)."""
    OmegaConf.register_new_resolver(
        "method_label", lambda _root_: method_label(_root_, sampler=False), replace=True
    )
    OmegaConf.register_new_resolver("method_lr", lambda _root_: method_lr(_root_), replace=True)


# at import too: a submitit worker resolves hydra.sweep.subdir before the task runs, having
# imported this module only because the (pickled) task function refers to it
register_resolvers()


def register() -> None:
    from shared.backbone.presets import PRESETS

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    options = {
        "method": method_nodes(),
        "backbone": {
            name.lower().replace("-", "_").replace("/", "_"): BackboneConfig(preset=name)
            for name in PRESETS
        },
        "tokenizer": {
            "fashion": TokenizerConfig(),
            # the codebook-size axis: the shipped K = 4096 tokenizer, same grid and code size
            "fashion_k4096": TokenizerConfig(path="shipped:fashion-vq-k4096"),
            "sd_vq_f8": TokenizerConfig("sd-vq-f8", "vq-f8/model.ckpt", 256),
            "llamagen": TokenizerConfig("llamagen-vq-ds8", "vq_ds8_c2i.pt", 256),
        },
        "data": {
            "fashion": DataConfig(),
            "imagenet": DataConfig(dataset="imagefolder", root=MISSING, num_classes=1000),
        },
        "budget": {"fashion": BudgetConfig(), **IMAGENET_BUDGETS},
        # fp32: bf16 autocast runs DiT-Nano/1 at ×0.79–0.87 of fp32 on a CPU (docs/frontier.md)
        "optim": {
            "fashion": OptimConfig(precision="fp32"),
            "imagenet": OptimConfig(lr=1e-4, warmup_steps=0, ema_decay=0.9999),
        },
        "eval": {"fashion": EvalConfig(), "imagenet": IMAGENET_EVAL},
    }
    for group, nodes in options.items():
        for name, node in nodes.items():
            cs.store(group=group, name=name, node=node)
