"""Start-up checks: every config value in its allowed range, and the input files present.

``validate(cfg)`` inspects the composed config only (no torch work, well under a second) and
reports every bad value at once, naming the key, the value and what is allowed, so that a
typo never costs a minute of training before the first evaluation finds it.
``check_inputs(cfg)`` then checks that the dataset and tokenizer it names exist.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from methods.options import MIN_TEMPERATURE, Range, meta, options_of, value_errors
from methods.records import categorical, records, variants
from shared.choices import DATASETS, LR_SCHEDULES, POS_EMBEDS, PRECISIONS, TOKENIZER_BACKENDS

from .errors import RunError
from .tracking import LOGGERS

# keys that may change when a run directory is relaunched: they decide how a run is
# evaluated, logged or executed, not what it trains (see experiments/runner/checkpoint.py)
NON_TRAINING_KEYS = (
    "eval.",
    "progress",
    "log_every",
    "checkpoint_every",
    "resume",
    "overwrite",
    "allow_changes",
    "compile",
    "deterministic",
    "data.extract_if_missing",
    "data.latents_dir",
    "tokenizer.path",
    "preset_name",
    "live_figure",
    "live_figure_hook",
    "logger",
    "wandb_project",
    # the setting may change; the precision it resolves to may not (checked as identity)
    "optim.precision",
    # the table of tuned rates: the rate it gives this run is optim.lr, a training key
    "optim.lr_by_method.",
)


def _method_keys(role: str) -> tuple[str, ...]:
    """``method.<option>`` of every record's options with this role (methods/options.py)."""
    keys = {
        f"method.{f.name}": None
        for rec in records().values()
        for f in options_of(rec.options)
        if meta(f, "role") == role
    }
    return tuple(keys)


# options that change how a quantity is computed (the head's chunking): a relaunch may
# change them
NON_TRAINING_KEYS += _method_keys("compute")


def solver_option_keys() -> dict[str, tuple[str, type]]:
    """{eval.<solver>.<option>: (solver, options dataclass)}: every sampler's own options
    (the records' ``solver_options``; MaskGIT's)."""
    return {
        f"eval.{solver}.{f.name}": (solver, cls)
        for rec in records().values()
        for solver, cls in rec.solver_options.items()
        for f in options_of(cls)
    }


# a method's own options are checked by its record (methods/records/), with the words its
# constructor raises
ENUMS = {
    "backbone.pos_embed": POS_EMBEDS,
    "tokenizer.backend": TOKENIZER_BACKENDS,
    "data.dataset": DATASETS,
    "optim.precision": PRECISIONS,
    "optim.schedule": LR_SCHEDULES,
    "eval.precision": PRECISIONS,
    "eval.spacing": ("linear", "log"),
    "eval.extractor": ("fashion", "inception"),
    "eval.reference_split": ("train", "test"),
    "device": ("auto", "cpu", "cuda"),
    "logger": LOGGERS,
}
# key → (low, high, low inclusive, high inclusive); None = unbounded
_BOUNDS = {
    "backbone.class_dropout": (0, 1, True, False),
    "tokenizer.image_size": (1, None, True, False),
    "data.num_classes": (1, None, True, False),
    "data.fraction": (0, 1, False, True),
    "budget.train_flops": (0, None, False, False),
    "budget.images": (1, None, True, False),
    "budget.batch_size": (1, None, True, False),
    "optim.lr": (0, None, False, False),
    "optim.weight_decay": (0, None, True, False),
    "optim.grad_clip": (0, None, True, False),
    "optim.warmup_steps": (0, None, True, False),
    "optim.decay_fraction": (0, 1, False, False),
    "optim.ema_decay": (0, 1, True, False),
    "eval.points": (1, None, True, False),
    # precision/recall count each sample's 3 nearest neighbours besides itself (torch-fidelity)
    "eval.num_samples": (4, None, True, False),
    "eval.steps": (1, None, True, False),
    "eval.temperature": (0, None, True, False),
    "eval.cfg_scale": (0, None, True, False),
    "eval.reference_n": (4, None, True, False),
    "eval.batch_size": (1, None, True, False),
    "eval.grid_samples": (0, None, True, False),
    "seed": (0, 2**64 - 1, True, True),  # torch.manual_seed's range
    "eval.seed": (0, 2**64 - 1, True, True),
    "log_every": (1, None, True, False),
    "checkpoint_every": (1, None, True, False),
}
RANGES = {key: Range(*bounds) for key, bounds in _BOUNDS.items()}


def _float32_errors(get, bad) -> None:
    """Options that pass their ranges but overflow float32 (the dtype every sampler and loss
    computes in) where the method uses them; the limits live with the methods."""
    v = get("eval.temperature")
    if isinstance(v, int | float) and 0 < v < MIN_TEMPERATURE:
        bad(
            "eval.temperature",
            f"0 (the argmax) or a number ≥ {MIN_TEMPERATURE:g}: logits/τ overflow float32 "
            "below it, and the draws become arbitrary instead of the argmax",
        )
    for key in ("seed", "eval.seed"):
        v = get(key)
        if isinstance(v, float) and not v.is_integer():
            bad(key, "an integer (a generator seed)")


def _method_errors(get, bad) -> None:
    """The method exists, its options are allowed (its record's choices, ranges and rules),
    and the sampler suits it (solver, temperature)."""
    name = get("method.name")
    found = records()
    if name not in found:
        bad("method.name", "one of " + ", ".join(found))
        return
    rec = found[name]
    given = {k: get(f"method.{k}") for k in rec.option_names() if get(f"method.{k}") is not None}
    for option, expected in rec.errors(given):
        bad(f"method.{option}", expected)
    solver = get("eval.solver")
    if solver not in rec.solvers:
        bad("eval.solver", f"one of {', '.join(rec.solvers)} (the samplers of {name})")
    else:
        why = rec.solver_rules(solver, {**rec.defaults(), **given})
        if why:
            bad("eval.solver", why)
    if name not in categorical() and get("eval.temperature") != 1.0:
        bad("eval.temperature", f"1.0: {name} has no categorical posterior to temper")
    for solver, cls in {s: c for r in found.values() for s, c in r.solver_options.items()}.items():
        given = {f.name: get(f"eval.{solver}.{f.name}") for f in options_of(cls)}
        for option, expected in value_errors(
            cls, {k: v for k, v in given.items() if v is not None}
        ):
            bad(f"eval.{solver}.{option}", expected)


def validation_errors(cfg) -> list[str]:
    """Every problem with ``cfg``, one line each (empty when the config is sound)."""
    from shared.backbone.presets import PRESETS

    try:  # every later check reads resolved values: a rate that cannot be looked up ends here
        OmegaConf.select(cfg, "optim.lr")
    except Exception as e:  # omegaconf wraps the resolver's ValueError, in its own words
        return [
            str(e).splitlines()[0].removeprefix("ValueError raised while resolving interpolation: ")
        ]
    errors = []

    def get(key):
        return OmegaConf.select(cfg, key, default=None)

    def bad(key, allowed):
        errors.append(f"{key}={get(key)!r} is not allowed; expected {allowed}")

    for key, choices in ENUMS.items():
        if get(key) is not None and get(key) not in choices:
            bad(key, "one of " + ", ".join(choices))
    for key, within in RANGES.items():
        v = get(key)
        if v is not None and not within.holds(v):
            bad(key, str(within))
    for i, beta in enumerate(get("optim.betas") or ()):
        if not Range(0, 1).holds(beta):
            errors.append(f"optim.betas[{i}]={beta!r} is not allowed; expected a number in [0, 1)")
    if (get("budget.train_flops") is None) == (get("budget.images") is None):
        errors.append(
            "set exactly one of budget.train_flops and budget.images (got "
            f"train_flops={get('budget.train_flops')}, images={get('budget.images')}): to match "
            "compute, budget.train_flops=F budget.images=null; to match iterations, "
            "budget.images=N budget.train_flops=null (on ImageNet: budget=imagenet_iters)"
        )
    if get("backbone.preset") not in PRESETS:
        bad("backbone.preset", "one of " + ", ".join(PRESETS))
    labels = list(variants())
    for label, rate in (get("optim.lr_by_method") or {}).items():
        if label not in labels:  # a misspelt objective would never get its rate
            bad(f"optim.lr_by_method.{label}", "an objective's name: one of " + ", ".join(labels))
        elif not (isinstance(rate, int | float) and rate > 0):
            bad(f"optim.lr_by_method.{label}", "a learning rate > 0")

    _method_errors(get, bad)
    _float32_errors(get, bad)
    errors += unknown_keys(cfg)
    if get("eval.cfg_scale") not in (None, 1.0) and not (get("backbone.class_dropout") or 0) > 0:
        errors.append(
            f"eval.cfg_scale={get('eval.cfg_scale')} needs a trained null class, but "
            "backbone.class_dropout=0 never trains it; set backbone.class_dropout>0 "
            "(0.1 in the paper) or eval.cfg_scale=1"
        )
    if get("eval.extractor") == "fashion" and get("data.dataset") != "fashion":
        errors.append(
            "eval.extractor=fashion measures Fashion-MNIST features only; use "
            "eval.extractor=inception for other datasets"
        )
    if get("device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            errors.append("device='cuda' but no CUDA device is visible; use device=cpu or auto")
    allowed = set(flat_keys(cfg)) - {"allow_changes"}
    for key in get("allow_changes") or ():
        if key not in allowed:
            errors.append(f"allow_changes names {key!r}, which is not a config key")
    return errors


def ignored_options(cfg) -> list[str]:
    """Warnings for sampler options set away from their defaults that the chosen sampler
    never reads."""
    solver = OmegaConf.select(cfg, "eval.solver", default=None)
    out = []
    for key, (reader, cls) in solver_option_keys().items():
        v = OmegaConf.select(cfg, key, default=None)
        default = cls.__dataclass_fields__[key.rsplit(".", 1)[1]].default
        if reader != solver and v is not None and v != default:
            out.append(
                f"{key}={v} is ignored: it is read only with eval.solver={reader} "
                f"(here eval.solver={solver})"
            )
    return out


def unknown_keys(cfg, prefix: str = "") -> list[str]:
    """Keys that no schema declares: Hydra's ``+key=value`` adds them to a structured config
    without a word, and nothing would ever read them (a typo, or an option of another
    method)."""
    import dataclasses

    if not OmegaConf.is_config(cfg) or not OmegaConf.is_dict(cfg):
        return []
    schema = OmegaConf.get_type(cfg)
    known = (
        {f.name for f in dataclasses.fields(schema)}
        if schema is not None and dataclasses.is_dataclass(schema)
        else None
    )
    out = []
    for key in cfg.keys():
        if key == "hydra":
            continue
        if known is not None and key not in known:
            out.append(
                f"{prefix}{key} is not a config key of {schema.__name__} (added with "
                f"'+'?); drop it, or check its spelling"
            )
            continue
        node = cfg._get_node(key)
        if OmegaConf.is_dict(node):
            out += unknown_keys(node, f"{prefix}{key}.")
    return out


def validate(cfg) -> None:
    """Raise RunError listing every bad config value (see :func:`validation_errors`)."""
    errors = validation_errors(cfg)
    if errors:
        raise RunError("invalid config:\n  " + "\n  ".join(errors))


def flat_keys(cfg, prefix: str = "") -> dict:
    """{'optim.lr': 0.001, …}: the config as dotted keys → plain values."""
    tree = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_inputs(cfg) -> None:
    """Fail fast (before torch-heavy work) on a missing dataset or tokenizer."""
    if cfg.data.dataset == "fashion":
        from shared.data.fashion_mnist import FILES, missing_data_message, resolve_root

        root = resolve_root(cfg.data.root)
        if not all(os.path.isfile(os.path.join(root, f)) for pair in FILES.values() for f in pair):
            raise RunError(missing_data_message(root))
        if cfg.data.num_classes != 10:
            raise RunError(
                f"data.num_classes={cfg.data.num_classes}, but Fashion-MNIST has 10 "
                "classes; set data.num_classes=10"
            )
    elif not cfg.data.root or not os.path.isdir(cfg.data.root):
        raise RunError(
            f"data.root={cfg.data.root!r} is not a folder; point it at an ImageNet-style "
            "train folder (root/<class>/<image>)"
        )
    else:  # one listing of the tree: classes, empty folders, non-image files, image count
        from shared.data.image_folder import ImageFolderError, scan_class_folders

        try:
            classes, samples = scan_class_folders(cfg.data.root)
        except ImageFolderError as e:
            raise RunError(f"data.root: {e}") from None
        if len(classes) != cfg.data.num_classes:
            shown = ", ".join(classes[:4]) + (", …" if len(classes) > 4 else "")
            raise RunError(
                f"data.num_classes={cfg.data.num_classes}, but data.root={cfg.data.root} holds "
                f"{len(classes)} class folder(s) ({shown or 'none'}); set "
                f"data.num_classes={len(classes)} or point data.root at the full folder"
            )
        if cfg.eval.reference_n is not None and cfg.eval.reference_n > len(samples):
            raise RunError(
                f"eval.reference_n={cfg.eval.reference_n}, but data.root={cfg.data.root} holds "
                f"{len(samples)} images; lower eval.reference_n to at most {len(samples)}"
            )
    if cfg.data.dataset == "fashion" and cfg.eval.reference_n is not None:
        from shared.data.fashion_mnist import FILES, resolve_root
        from shared.data.idx import read_labels

        split = cfg.eval.reference_split
        total = len(read_labels(os.path.join(resolve_root(cfg.data.root), FILES[split][1])))
        if cfg.eval.reference_n > total:
            raise RunError(
                f"eval.reference_n={cfg.eval.reference_n}, but the Fashion-MNIST {split} split "
                f"holds {total} images; lower eval.reference_n to at most {total}"
            )
    if cfg.eval.extractor == "inception":
        from shared.metrics.inception import missing_weights_message

        missing = missing_weights_message()
        if missing:
            raise RunError(missing)
    if cfg.eval.metric_net and not os.path.isfile(os.path.join(cfg.eval.metric_net, "meta.json")):
        raise RunError(
            f"eval.metric_net={cfg.eval.metric_net!r} holds no network (meta.json + "
            "model.safetensors); unset it for the shipped one"
        )
    if cfg.tokenizer.backend == "fashion-vq":
        from shared.artifacts import METRIC_NET, ArtifactError, shipped, shipped_tokenizer_name

        try:  # the shipped artifacts this run would use: present and unchanged
            name = shipped_tokenizer_name(cfg.tokenizer.path)
            path = shipped(name) if name else cfg.tokenizer.path
            if cfg.eval.extractor == "fashion" and not cfg.eval.metric_net:
                shipped(METRIC_NET)
        except ArtifactError as e:
            raise RunError(str(e)) from None
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):
            raise RunError(
                f"no Fashion-MNIST tokenizer at {path} (tokenizer.json missing); leave "
                "tokenizer.path unset for the shipped one, or rebuild one with "
                "`python experiments/build_artifacts.py`"
            )
    else:
        from shared.tokenizers.pretrained import LLAMAGEN_HINT, SD_HINT

        hint = SD_HINT if cfg.tokenizer.backend == "sd-vq-f8" else LLAMAGEN_HINT
        if not cfg.tokenizer.path or not os.path.exists(cfg.tokenizer.path):
            raise RunError(f"tokenizer weights {cfg.tokenizer.path!r} not found: {hint}")
        if cfg.tokenizer.backend == "llamagen-vq-ds8" and os.path.isdir(cfg.tokenizer.path):
            raise RunError(
                f"tokenizer.path={cfg.tokenizer.path} is a folder; LlamaGen's "
                f"tokenizer is one file: {hint}"
            )
        if os.path.isdir(cfg.tokenizer.path) and not os.path.isfile(
            os.path.join(cfg.tokenizer.path, "config.json")
        ):
            raise RunError(
                f"tokenizer.path={cfg.tokenizer.path} is a folder without config.json (not a "
                f"diffusers VQModel); for the latent-diffusion checkpoint give the file itself "
                f"(…/vq-f8/model.ckpt): {hint}"
            )
