"""Every method, variant and solver computes what it computed before the methods were
restructured: the losses of three training steps and the codes a sampler draws, at fixed
seeds, against ``frozen_behaviour.json`` (recorded on main before the change).

On the CPU the record was made on (same torch, same vector unit) the comparison is bitwise;
elsewhere float rounding may differ in the last bits, so losses are compared to 1e-5 and
codes must agree on 95% of positions (the message says which comparison ran).

Rewrite the record only for an intended change of behaviour, saying so in the commit:
``python tests/methods/test_frozen_behaviour.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import pytest
import torch
from helpers.frozen import fingerprint

import methods
from methods.records.dfm import MaskGITOptions
from shared.backbone import DiT

RECORD = os.path.join(os.path.dirname(__file__), "frozen_behaviour.json")
K, D, SIDE, CLASSES = 16, 4, 4, 4

# (name, options, [(solver, steps, temperature, cfg_scale), ...]); options as methods.build
LATENT = [("euler", 4, 1.0, 1.0), ("heun", 3, 1.0, 1.0), ("midpoint", 3, 1.0, 2.0)]
CASES = {
    "cfm": ("cfm", {}, LATENT + [("dopri5", 0, 1.0, 1.0)]),
    "cfm-unit-logit": ("cfm", {"latent_scale": "unit", "time_sampling": "logit_normal"}, LATENT),
    "cfm-endpoint": ("cfm-endpoint", {}, LATENT),
    "purr": ("purr", {}, LATENT + [("euler", 4, 0.5, 1.0), ("euler", 4, 0.0, 2.0)]),
    "purr-full-unit": ("purr", {"head": "full", "latent_scale": "unit"}, LATENT),
    "dfm": (
        "dfm",
        {},
        [
            ("euler", 4, 1.0, 1.0),
            ("euler", 4, 0.7, 2.0),
            ("euler-redraw", 4, 1.0, 1.0),
            ("maskgit", 4, 1.0, 1.0),
        ],
    ),
    "dfm-maskgit-options": (
        "dfm",
        {},
        [
            (
                "maskgit",
                5,
                1.0,
                1.0,
                {"schedule": "linear", "choice_temperature": 2.0, "confidence_temperature": 0.5},
            )
        ],
    ),
    "dfm-kappa2-full": ("dfm", {"kappa_power": 2.0, "head": "full"}, [("euler", 4, 1.0, 1.0)]),
    "dfm-uniform": ("dfm", {"source": "uniform"}, [("euler", 4, 1.0, 1.0), ("euler", 4, 0.5, 2.0)]),
    "dfm-mdlm": ("dfm", {"weighting": "mdlm"}, [("euler", 4, 1.0, 1.0)]),
    "dfm-metric": ("dfm-metric", {}, [("euler", 4, 1.0, 1.0), ("euler", 4, 0.5, 2.0)]),
    "dfm-metric-sq": (
        "dfm-metric",
        {"distance": "sqeuclidean", "beta_scale": 3.0, "beta_power": 2.0},
        [("euler", 4, 1.0, 1.0)],
    ),
}


def behaviour(name: str, options: dict, samplers: list) -> dict:
    """Three AdamW steps from fixed weights and data, then every sampler from the result."""
    torch.manual_seed(0)
    codebook = torch.randn(K, D)
    method = methods.build(name, codebook=codebook, **options)
    net = DiT(
        input_size=SIDE,
        patch_size=1,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=CLASSES,
        **method.model_kwargs(),
    )
    data = torch.randint(0, K, (8, SIDE, SIDE))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(3):
        y = torch.randint(0, CLASSES, (8,), generator=g)
        out = method.loss(net, data[y % 8], y, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    net.eval()
    draws = []
    for solver, steps, temperature, cfg_scale, *solver_options in samplers:
        g = torch.Generator().manual_seed(2)
        y = torch.arange(6) % CLASSES
        kw = {"temperature": temperature} if temperature != 1.0 else {}
        if solver_options:  # MaskGIT's own options (eval.maskgit)
            kw["solver_options"] = MaskGITOptions(**solver_options[0])
        out = method.sample(
            net, 6, (SIDE, SIDE), max(steps, 1), y=y, solver=solver, cfg_scale=cfg_scale,
            generator=g, **kw,
        )  # fmt: skip
        draws.append(
            {
                "sampler": [solver, steps, temperature, cfg_scale],
                "codes": out.indices.flatten().tolist(),
                "nfe": out.nfe,
                "nfe_rows": out.nfe_rows,
            }
        )
    return {"losses": [float.hex(v) for v in losses], "draws": draws}


def record() -> dict:
    return {"fingerprint": fingerprint(), "cases": {c: behaviour(*v) for c, v in CASES.items()}}


def _saved() -> dict:
    with open(RECORD) as f:
        return json.load(f)


@pytest.mark.parametrize("case", list(CASES))
def test_behaviour_is_unchanged(case):
    saved = _saved()
    assert set(saved["cases"]) == set(CASES), "the record and CASES name different cases"
    bitwise = saved["fingerprint"] == fingerprint()
    want, got = saved["cases"][case], behaviour(*CASES[case])
    want_losses = [float.fromhex(v) for v in want["losses"]]
    got_losses = [float.fromhex(v) for v in got["losses"]]
    how = "bitwise" if bitwise else "to 1e-5 (another CPU than the record's)"
    if bitwise:
        assert got_losses == want_losses, f"{case}: losses changed ({how})"
    else:
        assert got_losses == pytest.approx(want_losses, rel=1e-5), f"{case}: losses ({how})"
    for w, g in zip(want["draws"], got["draws"], strict=True):
        label = f"{case} {w['sampler']}"
        assert (g["nfe"], g["nfe_rows"]) == (w["nfe"], w["nfe_rows"]), f"{label}: NFE changed"
        same = sum(a == b for a, b in zip(w["codes"], g["codes"], strict=True))
        if bitwise:
            assert same == len(w["codes"]), f"{label}: {len(w['codes']) - same} codes changed"
        else:
            assert same >= 0.95 * len(w["codes"]), f"{label}: {same}/{len(w['codes'])} agree"


def test_record_covers_every_registered_method():
    """A method registered after the record was made has no frozen behaviour to keep; the
    record must still cover every method that existed when it was written."""
    recorded = {name for name, _, _ in CASES.values()}
    assert recorded <= set(methods.METHODS)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python {sys.argv[0]} --write   (rewrites {RECORD})")
    data = record()
    with open(RECORD, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    digest = hashlib.sha256(open(RECORD, "rb").read()).hexdigest()[:12]
    print(f"wrote {RECORD} ({len(data['cases'])} cases, sha256 {digest})")
