"""Shared test fixtures. Tests never touch the network (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["MAMMOFL_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One PyTorch thread per pytest-xdist worker (and per process a test starts, which inherits
    # it), unless set: two workers on two cores with PyTorch's default of one thread per core
    # oversubscribe the CPU, and OpenMP's spinning threads wait for descheduled peers
    # (`pytest tests/unit/training tests/unit/privacy tests/unit/gan/test_gan_grid.py -n 2`:
    # 96 s wall, 174 s CPU with the default; 71 s, 124 s with one thread).
    os.environ.setdefault("OMP_NUM_THREADS", "1")

PROJECT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAMMOFL_SHARED", PROJECT.parent / "shared")).resolve()
RELEASE = SHARED / "data" / "mammo_dp_release"
WEIGHTS = SHARED / "weights" / "efficientnet_lite0_in1k_timm.safetensors"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that collected no test must not pass (pytest's exit code 5)."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def require_shared(path: Path) -> Path:
    """Fail under CI (CI=true or CI=1, any case) when ../shared data is missing; elsewhere skip."""
    if not path.exists():
        message = f"needs {path} (../shared beside the project)"
        if os.environ.get("CI", "").strip().lower() in ("true", "1"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def release_dir() -> Path:
    return require_shared(RELEASE)


@pytest.fixture(scope="session")
def effnet_weights() -> Path:
    return require_shared(WEIGHTS)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from common.data.phantom_patches import write_phantom_patches

    folder = tmp_path_factory.mktemp("phantom")
    write_phantom_patches(folder, patients=16, test_patients=8, size=32, seed=0)
    return folder


@pytest.fixture
def phantom_env(phantom_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAMMOFL_PHANTOM", str(phantom_dir))
    return phantom_dir


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The federated/tiny preset's phantom downloads and central test set (no run yet)."""
    from common.config.compose import compose_federated_config
    from simulations.federated_workspace import prepare_workspace

    out = tmp_path_factory.mktemp("federation")
    prepare_workspace(compose_federated_config(["experiment=federated/tiny", f"out_dir={out}"]))
    return out


def tiny_federated_config(out: Path, *overrides: str):  # type: ignore[no-untyped-def]
    from common.config.compose import compose_federated_config

    return compose_federated_config(["experiment=federated/tiny", f"out_dir={out}", *overrides])
