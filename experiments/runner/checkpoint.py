"""What a checkpoint holds, and when a run directory may resume from one.

``checkpoints/last.pt`` is a plain dict of tensors and values (loaded ``weights_only``):

    model, ema, opt        state dicts
    progress               step, loss_sum/loss_count (since the last evaluation), wall_s
    total_steps            the budget in steps
    config                 the resolved run config as dotted keys
    identity               tokenizer id, index-shard checksum and resolved training precision
    metrics_csv            the text of metrics.csv up to this step (the rows it has passed), so
                           a damaged or cut metrics.csv is rewritten from it on relaunch
    digest                 sha256 of everything above (:func:`content_digest`), recorded when
                           written and compared when loaded: a flipped bit is refused, not run

Checkpoints from before the last two keys load unverified (and their metrics.csv is checked
for the rows it must have, not rewritten).

No RNG state is stored: training randomness is a function of (seed, rank, step) (see
``experiments/runner/train_loop.py``), and the learning rate a function of (config, step), so the
step counter is all a resume needs. A relaunch whose *training* config differs from the
checkpoint's is refused, naming the keys, unless ``allow_changes`` lists them (for example
``optim.lr`` after a non-finite stop); keys that only decide evaluation, logging or
execution (``checks.NON_TRAINING_KEYS``) may change and are recorded.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch

from methods.options import meta, options_of
from methods.records import records
from shared.io import atomic_torch_save
from shared.safe_load import FileLoadError, load_torch_file

from .checks import NON_TRAINING_KEYS, flat_keys, solver_option_keys
from .errors import RunRefused

FORMAT = 2


@dataclass
class Progress:
    step: int = 0
    loss_sum: float = 0.0  # since the last evaluation
    loss_count: int = 0
    wall_s: float = 0.0  # training wall-clock, evaluations excluded

    def mean_loss(self) -> float:
        return self.loss_sum / max(1, self.loss_count)


def is_training_key(key: str) -> bool:
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NON_TRAINING_KEYS)


def training_config(config: dict) -> dict:
    """The training keys of a flat config, the seed left out (and ``SILENT_AT`` keys at their
    old behaviour)."""
    return {
        k: v
        for k, v in config.items()
        if is_training_key(k) and k != "seed" and not (k in SILENT_AT and v == SILENT_AT[k])
    }


def training_identity(config: dict) -> str:
    """A run's identity for analysis: a digest of every training key of its flat config but
    the seed, so runs that differ only in their seed share it and runs that differ in any
    option that changes training (e.g. ``method.beta_scale``, which no label names) do not."""
    from shared.paths import config_hash

    return config_hash(training_config(config), 16)


def content_digest(ck: dict) -> str:
    """sha256 of a checkpoint dict's contents (its ``digest`` key left out): every tensor's
    key path, dtype, shape and bytes, every other value's key path and repr, in key order.
    Computed from the objects, not the file, so it is the same whether the dict was just
    built or loaded back (zip layout and pickle framing do not enter)."""
    h = hashlib.sha256()

    def visit(obj, path: str) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{path}:{t.dtype}:{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            h.update(f"{path}:dict{len(obj)}|".encode())
            for key in sorted(obj, key=repr):
                visit(obj[key], f"{path}/{key!r}")
        elif isinstance(obj, list | tuple):
            h.update(f"{path}:{type(obj).__name__}{len(obj)}|".encode())
            for i, value in enumerate(obj):
                visit(value, f"{path}/{i}")
        else:
            h.update(f"{path}={obj!r}|".encode())

    visit({k: v for k, v in ck.items() if k != "digest"}, "")
    return h.hexdigest()


def seal(ck: dict) -> dict:
    """``ck`` with its :func:`content_digest` recorded under ``digest``."""
    return {**ck, "digest": content_digest(ck)}


def save(
    path: str,
    *,
    model,
    ema,
    opt,
    progress: Progress,
    total_steps: int,
    config: dict,
    identity: dict,
    metrics_csv: str | None = None,
) -> None:
    """Write ``path`` holding each part under its name (the module docstring lists them).
    ``metrics_csv``: the text of metrics.csv up to this step (None: not kept, as in a
    checkpoint from before the key; an empty run keeps its header)."""
    ck = {
        "format": FORMAT,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "opt": opt.state_dict(),
        "progress": asdict(progress),
        "total_steps": total_steps,
        "config": config,
        "identity": identity,
    }
    if metrics_csv is not None:
        ck["metrics_csv"] = metrics_csv
    atomic_torch_save(seal(ck), path)


class CheckpointUnreadable(RunRefused):
    """A checkpoint that cannot be read or whose contents changed since it was written."""


# Keys renamed since checkpoints were first written: old name → new name. MaskGIT's options
# moved from the method group to eval.maskgit (they never trained anything).
MOVED_KEYS = {
    "method.maskgit_schedule": "eval.maskgit.schedule",
    "method.maskgit_choice_temperature": "eval.maskgit.choice_temperature",
    "method.maskgit_confidence_temperature": "eval.maskgit.confidence_temperature",
}


def migrate(config: dict) -> dict:
    """A checkpoint's flat config in today's key names (``MOVED_KEYS``), applied once where
    a checkpoint is loaded, so that nothing downstream knows an old name."""
    return {MOVED_KEYS.get(k, k): v for k, v in config.items()}


def load(path: str, map_location="cpu") -> dict:
    """A checkpoint written by :func:`save`, its digest (when it has one) checked; refuses
    anything else with one line naming the file (:class:`CheckpointUnreadable`)."""
    with open(path, "rb"):  # an OSError (permission, I/O) is itself, not a damaged file
        pass
    try:
        ck = load_torch_file(path, "checkpoint", map_location=map_location)
    except FileLoadError as e:  # truncated, not a torch file, or a refused pickle
        raise CheckpointUnreadable(str(e).rstrip(".")) from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointUnreadable(
            f"{path} is not a checkpoint of this trainer (format {found!r}, expected {FORMAT})"
        )
    if "digest" in ck and content_digest(ck) != ck["digest"]:
        raise CheckpointUnreadable(
            f"{path} does not match the sha256 recorded when it was written (a changed "
            "byte: disk or copy damage)"
        )
    ck["config"] = migrate(ck["config"])
    return ck


# Training keys added after checkpoint format 2, with the value that reproduces what a
# checkpoint written before them trained with: a relaunch of such a checkpoint that leaves
# them at this value changes nothing, so it is accepted (and recorded) without allow_changes.
ADDED_KEYS = {
    "optim.schedule": "constant",
    "data.fraction": 1.0,  # the whole training split
    # the method options whose record marks them ``added`` (methods/options.py), at their default
    **{
        f"method.{f.name}": f.default
        for rec in records().values()
        for f in options_of(rec.options)
        if meta(f, "added")
    },
}

# Training keys added after runs were committed, left out of a run's training config (and so
# of its identity) at the value that reproduces what those runs trained: a new run at that
# value is the same series as an old run that lacks the key, not another one named by it.
SILENT_AT = {k: ADDED_KEYS[k] for k in ("data.fraction",)}


def changes(saved: dict, current: dict) -> dict[str, tuple]:
    """{key: (saved value, current value)} for every dotted key that differs."""
    keys = sorted(set(saved) | set(current))
    return {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}


# Training keys added later that change nothing unless another key has a value: a checkpoint
# from before them resumes without allow_changes when that key is not set so (the MDLM time
# range and stratification matter only to weighting=mdlm, whose checkpoints without them
# are refused, naming the keys)
INERT_UNLESS = {
    "optim.decay_fraction": ("optim.schedule", "wsd"),
    **{
        f"method.{f.name}": (f"method.{meta(f, 'inert_unless')[0]}", meta(f, "inert_unless")[1])
        for rec in records().values()
        for f in options_of(rec.options)
        if meta(f, "inert_unless")
    },
}


def _added_with_old_behaviour(key: str, saved: dict, current: dict) -> bool:
    if key in saved:
        return False
    if key in INERT_UNLESS:
        other, value = INERT_UNLESS[key]
        return saved.get(other, ADDED_KEYS.get(other)) != value
    return key in ADDED_KEYS and current.get(key) == ADDED_KEYS[key]


def check_resume(path: str, ck: dict, cfg) -> dict:
    """Refuse (RunRefused, listing the keys) a relaunch whose training config differs from
    the checkpoint's, unless ``cfg.allow_changes`` names each key. Returns every accepted
    change {key: [old, new]} so the run can record it."""
    diff = changes(ck["config"], flat_keys(cfg))
    allowed = set(cfg.get("allow_changes") or ())
    saved, current = ck["config"], flat_keys(cfg)
    refused = {
        k: v
        for k, v in diff.items()
        if is_training_key(k)
        and k not in allowed
        and not _added_with_old_behaviour(k, saved, current)
    }
    if refused:
        lines = "\n  ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in refused.items())
        keys = ",".join(refused)
        raise RunRefused(
            f"{path} was trained with a different config:\n  {lines}\nRelaunch with the "
            f"checkpoint's values, use a new run directory, or accept the change explicitly "
            f"with 'allow_changes=[{keys}]'."
        )
    return {k: list(v) for k, v in diff.items()}


# Evaluation keys that change what an evaluation row measures (its samples or its metric).
# A run's metrics.csv holds one measurement: once it has rows, a relaunch that changes one of
# these is refused unless allow_changes names it (otherwise a dfm run relaunched with
# eval.solver=maskgit would hold rows labelled dfm and dfm-maskgit). Keys that only change float
# batching or the figures (eval.batch_size, eval.grid_samples) or where later evaluations
# fall (eval.points, eval.spacing) are not among them.
MEASUREMENT_KEYS = (
    "eval.num_samples",
    "eval.steps",
    "eval.solver",
    "eval.temperature",
    "eval.cfg_scale",
    "eval.extractor",
    "eval.metric_net",
    "eval.reference_split",
    "eval.reference_n",
    "eval.seed",
    "eval.precision",
    *solver_option_keys(),
)
SAMPLE_ELSEWHERE = (
    "To sample or score it with other settings use analysis/nfe_sweep.py, "
    "analysis/guidance_sweep.py or experiments/sample.py + experiments/evaluate.py (they "
    "write their own files), or train into a new run directory."
)


def check_relabel(path: str, ck: dict, cfg, evaluated: bool) -> str | None:
    """Why this relaunch would relabel the run instead of extending it, or None.

    - A run with evaluation rows (``evaluated``) keeps its measurement: a change to a
      ``MEASUREMENT_KEYS`` key is refused unless ``allow_changes`` names it.
    - A finished run (the checkpoint at its last step, the budget unchanged) trains and
      evaluates nothing more: a relaunch that changes a training or measurement key would
      only rewrite its label and summary, so it is refused even under allow_changes."""
    diff = changes(ck["config"], flat_keys(cfg))
    allowed = set(cfg.get("allow_changes") or ())
    step, total = ck.get("progress", {}).get("step", 0), ck.get("total_steps")
    finished = (
        total is not None and step >= total and not any(k.startswith("budget.") for k in diff)
    )
    saved, current = ck["config"], flat_keys(cfg)
    relabel = {
        k: v
        for k, v in diff.items()
        if (k in MEASUREMENT_KEYS or is_training_key(k))
        and not _added_with_old_behaviour(k, saved, current)
    }
    lines = "\n  ".join(f"{k}: runs {a!r}, now {b!r}" for k, (a, b) in relabel.items())
    if finished and relabel:
        return (
            f"{path} is finished (step {step} of {total}): this launch would train and "
            f"evaluate nothing, only relabel the run with\n  {lines}\n{SAMPLE_ELSEWHERE}"
        )
    measured = {k: v for k, v in relabel.items() if k in MEASUREMENT_KEYS and k not in allowed}
    if evaluated and measured:
        lines = "\n  ".join(f"{k}: rows {a!r}, now {b!r}" for k, (a, b) in measured.items())
        return (
            f"{path} has evaluation rows measured with other settings:\n  {lines}\nOne "
            f"metrics.csv holds one measurement. Relaunch with the run's values, or mix them "
            f"explicitly with 'allow_changes=[{','.join(measured)}]' (every row names its "
            f"settings). {SAMPLE_ELSEWHERE}"
        )
    return None


def check_identity(path: str, ck: dict, identity: dict, legacy: dict | None = None) -> None:
    """The tokenizer, training data and resolved training precision must be the ones the
    checkpoint trained with. ``legacy``: the value of a key that older checkpoints did not
    record (what the code that wrote them did)."""
    for key, now in identity.items():
        then = ck["identity"].get(key, (legacy or {}).get(key))
        if then == now:
            continue
        if key == "train_precision":
            raise RunRefused(
                f"{path} trained in {then}, this launch would train in {now} (optim.precision="
                f"auto resolves per machine); resume with optim.precision={then}"
            )
        raise RunRefused(
            f"{path} trained on {key} {then!r}, this launch has {now!r}; "
            "resume with the same tokenizer and index shards"
        )


@torch.no_grad()
def all_finite(*modules) -> bool:
    """Every parameter of every module finite (one host sync)."""
    flags = [torch.isfinite(p).all() for m in modules for p in m.parameters()]
    return bool(torch.stack(flags).all()) if flags else True
