import os
from pathlib import Path

import pytest

import mmsa  # noqa: F401  (registers the Auto classes)


def missing_data(reason: str):
    """Skips a real-data test, or fails it where `MMSA_REQUIRE_DATA=1` (CI, when the data is present)."""
    if os.environ.get("MMSA_REQUIRE_DATA") == "1":
        pytest.fail(f"{reason} (MMSA_REQUIRE_DATA=1: the real-data tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mvsa_single_dir() -> Path:
    path = os.environ.get("MVSA_SINGLE_DIR")
    if not path:
        missing_data("MVSA_SINGLE_DIR is not set")
    if not (Path(path) / "labelResultAll.txt").is_file():
        missing_data(f"MVSA_SINGLE_DIR={path} holds no labelResultAll.txt")
    return Path(path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One small trained run (tiny towers, frozen and cached, a generated MVSA release, mm_transformer),
    shared by the release, pipeline and CLI tests: a loadable model folder with its test results."""
    import train_hf
    from mmsa.testing_utils import fake_mvsa_posts, write_fake_mvsa, write_tiny_towers

    folder = tmp_path_factory.mktemp("release")
    text, vision = write_tiny_towers(folder / "towers")
    raw = write_fake_mvsa(folder / "raw", fake_mvsa_posts(60, seed=4))
    output_dir = folder / "run"
    train_hf.main(
        [
            "--text_model_name_or_path",
            str(text),
            "--vision_model_name_or_path",
            str(vision),
            "--dataset_name_or_path",
            str(raw),
            "--output_dir",
            str(output_dir),
            "--fusion",
            "mm_transformer",
            "--fusion_hidden_size",
            "16",
            "--fusion_num_heads",
            "4",
            "--num_train_epochs",
            "2",
            "--head_learning_rate",
            "3e-3",
            "--disable_tqdm",
            "true",
            "--freeze_text_backbone",
            "true",
            "--freeze_vision_backbone",
            "true",
            "--feature_cache_dir",
            str(folder / "cache"),
        ]
    )
    return output_dir


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Puts torch's thread count back after each test: `train_hf.main` sets the run's count (`cpu_threads`), and
    the behaviour probe of `tests/test_results_tables.py` is compared at the count a session starts with."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
