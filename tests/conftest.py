import os
from pathlib import Path

import pytest

import mmsa  # noqa: F401  (registers the Auto classes)


@pytest.fixture(scope="session")
def mvsa_single_dir() -> Path:
    path = os.environ.get("MVSA_SINGLE_DIR")
    if not path:
        pytest.skip("MVSA_SINGLE_DIR is not set")
    if not (Path(path) / "labelResultAll.txt").is_file():
        pytest.skip(f"MVSA_SINGLE_DIR={path} holds no labelResultAll.txt")
    return Path(path)
