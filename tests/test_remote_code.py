"""A saved folder loads through `trust_remote_code=True` where the `mmsa` package cannot be imported at all."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from mmsa.testing_utils import tiny_model_and_processor


CLEAN_ROOM = textwrap.dedent(
    """
    import sys
    sys.modules["mmsa"] = None  # any `import mmsa` now fails
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoProcessor

    folder = sys.argv[1]
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert "mmsa" not in type(model).__module__.split(".")[0], type(model).__module__
    images = [Image.new("RGBA", (70, 50), (200, 10, 10, 255)), Image.new("L", (30, 90), 40)]
    batch = processor(text=["i love this so much", "awful"], images=images)
    with torch.no_grad():
        logits = model(**batch).logits
    torch.save({"logits": logits, "batch": dict(batch), "model": type(model).__name__,
                "base": type(base).__name__, "processor": type(processor).__name__}, sys.argv[2])
    """
)


@pytest.mark.parametrize("fusion", ["mm_transformer", "ensemble"])
def test_clean_room_remote_code_load(tmp_path, fusion):
    model, processor = tiny_model_and_processor(fusion, modality_heads=fusion == "ensemble")
    model.eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_mmsa.MmsaModel"
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_mmsa.MmsaForSequenceClassification"
    assert {"configuration_mmsa.py", "modeling_mmsa.py", "processing_mmsa.py"} <= {p.name for p in folder.iterdir()}

    result_file = tmp_path / "result.pt"
    run = subprocess.run(
        [sys.executable, "-c", CLEAN_ROOM, str(folder), str(result_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(result_file)
    assert (result["model"], result["base"], result["processor"]) == (
        "MmsaForSequenceClassification",
        "MmsaModel",
        "MmsaProcessor",
    )
    images = [Image.new("RGBA", (70, 50), (200, 10, 10, 255)), Image.new("L", (30, 90), 40)]
    batch = processor(text=["i love this so much", "awful"], images=images)
    assert all(torch.equal(batch[k], result["batch"][k]) for k in batch)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, result["logits"])


def test_an_mpnet_text_tower_loads_by_remote_code_too(tmp_path):
    """The larger offline text tower is an MPNet (`configs/mpnet_lite2_naive_combine.yaml`): the saved folder loads in-library
    and by remote code alike (a tiny random MPNet here, of the real architecture)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, MPNetConfig, MPNetModel

    from mmsa import MmsaForSequenceClassification, MmsaProcessor
    from mmsa.testing_utils import tiny_tokenizer, write_tiny_towers

    _, vision = write_tiny_towers(tmp_path / "towers")
    tokenizer = tiny_tokenizer()
    config = MPNetConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=66,
    )  # fmt: skip
    torch.manual_seed(0)
    MPNetModel(config).save_pretrained(tmp_path / "mpnet")
    tokenizer.save_pretrained(tmp_path / "mpnet")
    model = MmsaForSequenceClassification.from_text_vision_pretrained(
        str(tmp_path / "mpnet"), str(vision), fusion="naive_combine", text_pooling="mean", fusion_hidden_size=16
    ).eval()
    processor = MmsaProcessor.from_model_config(model.config, AutoTokenizer.from_pretrained(tmp_path / "mpnet"))
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert AutoModelForSequenceClassification.from_pretrained(folder).config.text_config.model_type == "mpnet"
    run = subprocess.run(
        [sys.executable, "-c", CLEAN_ROOM, str(folder), str(tmp_path / "result.pt")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt")
    images = [Image.new("RGBA", (70, 50), (200, 10, 10, 255)), Image.new("L", (30, 90), 40)]
    with torch.no_grad():
        expected = model(**processor(text=["i love this so much", "awful"], images=images)).logits
    assert torch.equal(expected, result["logits"])
