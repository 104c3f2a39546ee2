"""A tiny locally built base model for ModelFactory tests (no network, no downloads).

Tests that need a base model import the session fixture: ``from factory_fixtures import tiny_model_dir  # noqa:
F401`` and take ``tiny_model_dir`` as an argument; it is built once per session with the same ``init_tiny`` a user
runs and must be treated as read-only. A test that changes the model (pretrain, …) copies it with
``tiny_model(tmp_path)``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from royalty.factory.basemodel import TinySpec, init_tiny

# ~40k parameters: a forward/backward pass takes milliseconds on one core.
TINY_SPEC = TinySpec(vocab_size=512, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)

_built: dict[str, Path] = {}


def _session_model(root: Path) -> Path:
    if "dir" not in _built:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            init_tiny(root / "tiny-llama", spec=TINY_SPEC, seed=0)
        finally:
            torch.set_num_threads(threads)
        _built["dir"] = root / "tiny-llama"
    return _built["dir"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny Llama (vocab 512, hidden 32, 2 layers) in standard HF format. Do not modify it."""
    return _session_model(tmp_path_factory.mktemp("factory-base"))


def tiny_model(tmp_path: Path) -> Path:
    """A private copy of the tiny model under ``tmp_path`` (built fresh, or copied from the session's build)."""
    target = tmp_path / "tiny-llama"
    if "dir" in _built:
        shutil.copytree(_built["dir"], target)
    else:
        init_tiny(target, spec=TINY_SPEC, seed=0)
    return target


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the test: the other core stays free, and results do not depend on the machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
