"""Shared fixtures: a tiny but complete runner environment (synthetic data, tiny tokenizer,
private cache; the shipped metric network)."""

import os

import pytest
from helpers import runs
from helpers.data import make_fmnist

from shared.tokenizers import FashionVQConfig, train_fashion_vq

# cuBLAS reads this when first used; set before any test touches CUDA (deterministic=true)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one core per worker, for the processes it starts too
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption(
        "--repeat",
        type=int,
        default=1,
        help="run each selected test N times (make flake: the process tests in a loop)",
    )


def pytest_generate_tests(metafunc):
    """``--repeat N``: every selected test N times, as N separate test items."""
    n = metafunc.config.getoption("repeat")
    if n > 1:
        metafunc.fixturenames.append("_repetition")
        metafunc.parametrize("_repetition", range(n), ids=lambda i: f"rep{i}")


def pytest_collection_modifyitems(config, items):
    """The tests that launch process trees first (they are the longest): with one worker per
    core the short in-process tests then fill the gaps instead of trailing behind them."""
    items.sort(key=lambda item: item.get_closest_marker("process") is None)


@pytest.fixture(autouse=True)
def _restore_deterministic_flag():
    """A run with deterministic=true sets a process-wide flag; keep it out of other tests."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    """Synthetic data, a tiny tokenizer, and a private cache (the metric network is the
    shipped one)."""
    base = tmp_path_factory.mktemp("runner")
    cache = base / "cache"
    cache.mkdir()
    data = base / "data"
    data.mkdir()
    make_fmnist(data, n_train=64, n_test=16)
    cfg = FashionVQConfig(
        block_out_channels=(16, 16, 16), steps=3, batch_size=8, data_root=str(data)
    )
    old = os.environ.get("VQBENCH_CACHE")
    os.environ["VQBENCH_CACHE"] = str(cache)
    try:
        tok = train_fashion_vq(cfg, str(base / "tok"), progress=False)
    finally:
        os.environ.pop("VQBENCH_CACHE") if old is None else os.environ.update(VQBENCH_CACHE=old)
    overrides = [f"data.root={data}", f"tokenizer.path={tok}", f"data.latents_dir={base / 'lat'}"]
    return {"cache": str(cache), "overrides": overrides + runs.TINY, "base": base}


class CodePayload:
    """Unpickling this runs ``touch <marker>``: the classic ``__reduce__`` attack."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def payload(tmp_path):
    """write(path, wrap=...) puts a code-running pickle at ``path``; ``ran()`` says whether
    any load executed it."""
    import torch

    marker = tmp_path / "payload-ran"

    class Payload:
        def write(self, path, wrap=lambda p: {"model": p}):
            os.makedirs(os.path.dirname(str(path)), exist_ok=True)
            torch.save(wrap(CodePayload(marker)), str(path))
            return str(path)

        def ran(self):
            return marker.exists()

    return Payload()


@pytest.fixture(scope="session")
def compose():
    """compose(overrides): the Hydra config of ``experiments/conf`` with those overrides."""
    return runs.compose


@pytest.fixture(scope="session")
def run_in_process():
    """run_in_process(env, overrides, run_dir, monkeypatch): one tiny training run, in this
    process, on the env's data and tokenizer."""
    return runs.run_in_process


@pytest.fixture(scope="session")
def latents(env) -> str:
    """The env's index shards (extracted on first use, like a run does): their folder."""
    return runs.ensure_latents(env)
