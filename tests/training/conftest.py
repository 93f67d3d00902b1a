"""Fixtures of the training tests."""

import pytest

from mmsa.testing_utils import fake_mvsa_posts, write_fake_mvsa, write_tiny_towers


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    text, vision = write_tiny_towers(folder / "towers")
    raw = write_fake_mvsa(folder / "raw", fake_mvsa_posts(80))
    return {"text": str(text), "vision": str(vision), "raw": str(raw), "folder": folder}
