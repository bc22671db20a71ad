"""pyproject.toml declares what the project's code imports, and nothing it does not."""

import ast
import importlib.metadata
import re
import sys
import tomllib

from shared.paths import REPO_ROOT

PACKAGES = ("methods", "shared", "experiments", "analysis")
# declared without an import, each for a reason
NOT_IMPORTED = {
    "hydra-submitit-launcher": "a Hydra plugin: hydra/launcher=slurm loads it by name",
    "scipy": "torchdiffeq's undeclared requirement (analysis/nfe_sweep.py's dopri5)",
    "torchvision": "pinned beside torch: torch-fidelity imports it, and an unpinned one breaks",
    "tensorboard": "torch.utils.tensorboard's SummaryWriter imports it (logger=tensorboard)",
}


def imported_top_level_modules() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - set(PACKAGES)


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_import_is_declared_and_every_declaration_imported():
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    # the optional trackers count as declared: imported only under logger=tensorboard/wandb
    requirements = project["dependencies"] + project["optional-dependencies"]["tracking"]
    declared = {normal(re.split(r"[=<>!~\[ ]", d)[0]) for d in requirements}
    dists = importlib.metadata.packages_distributions()
    used = {}
    for module in imported_top_level_modules():
        for dist in dists.get(module, []):
            used[normal(dist)] = module
    missing = sorted(f"{d} (import {m})" for d, m in used.items() if d not in declared)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    unused = sorted(declared - set(used) - set(NOT_IMPORTED))
    assert not unused, f"declared but never imported by {', '.join(PACKAGES)}: {unused}"
