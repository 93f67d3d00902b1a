"""train_hf.py end to end: a run trains, evaluates and saves a loadable model; runs launched alike give the same
result; resuming, refusing another run's checkpoint, label coverage."""

import json
import shutil
import signal
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from run_helpers import ROOT, run_script, tiny_args
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification, AutoProcessor

import train_hf
from mmsa.data import build_mvsa
from mmsa.metrics import load_sentiment_metrics
from mmsa.testing_utils import fake_mvsa_posts, write_fake_mvsa
from mmsa.training.callbacks import RUN_FINGERPRINT


KILLING_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import train_hf
    from transformers import TrainerCallback

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step >= int(os.environ["KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind

    class Trainer(train_hf.MmsaTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KillAfterCheckpoint())

    train_hf.MmsaTrainer = Trainer
    train_hf.main(sys.argv[1:])
    """
)


def test_train_evaluate_and_save_a_loadable_model(assets, tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        yaml.safe_dump({"fusion": "mm_transformer", "num_train_epochs": 5, "seed": 11, "class_weights": "balanced"})
    )
    output_dir = tmp_path / "run"
    # A config file, then flags that override it.
    metrics = train_hf.main([str(config_file), *tiny_args(assets, output_dir, "--num_train_epochs", "3")])

    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["num_train_epochs"] == 3 and state["best_metric"] is not None
    assert [e["epoch"] for e in state["log_history"] if "eval_macro_f1" in e] == [1.0, 2.0, 3.0]
    results = json.loads((output_dir / "test_results.json").read_text())
    assert results == {k: v for k, v in metrics.items()}
    # The reported metrics are those of the per-post predictions written beside them.
    rows = [json.loads(line) for line in (output_dir / "test_predictions.jsonl").read_text().splitlines()]
    truth, guess = [r["label"] for r in rows], [r["prediction"] for r in rows]
    labels = ["negative", "neutral", "positive"]
    assert results["test_accuracy"] == pytest.approx(accuracy_score(truth, guess))
    assert results["test_macro_f1"] == pytest.approx(f1_score(truth, guess, labels=labels, average="macro"))
    assert results["test_weighted_f1"] == pytest.approx(f1_score(truth, guess, labels=labels, average="weighted"))
    per_class = f1_score(truth, guess, labels=labels, average=None, zero_division=0)
    assert [results[f"test_f1_{label}"] for label in labels] == pytest.approx(list(per_class))
    assert (output_dir / "test_confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "negative" in (output_dir / "test_classification_report.txt").read_text()
    assert {
        "configuration_mmsa.py",
        "modeling_mmsa.py",
        "processing_mmsa.py",
        "config.json",
        "model.safetensors",
        "processor_config.json",
    } <= {p.name for p in output_dir.iterdir()}

    # output_dir is a model folder: reloading it reproduces the reported test metrics.
    model = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    assert model.config.fusion == "mm_transformer" and model.config.class_weights is not None
    test = build_mvsa(assets["raw"], num_proc=1)["test"]
    with torch.no_grad():
        batch = processor(text=test["text"], images=test["image"])
        predictions = model(**batch).logits.argmax(-1).numpy()
    references = np.array(test["label"])
    assert results["test_accuracy"] == pytest.approx(accuracy_score(references, predictions))
    assert results["test_macro_f1"] == pytest.approx(
        f1_score(references, predictions, average="macro", labels=[0, 1, 2], zero_division=0)
    )


def test_dataset_defaults_to_mvsa_single_dir(assets, tmp_path, monkeypatch):
    monkeypatch.delenv("MVSA_SINGLE_DIR", raising=False)
    args = tiny_args(assets, tmp_path / "run")
    args = args[:4] + args[6:]  # drop --dataset_name_or_path
    with pytest.raises(ValueError, match="MVSA_SINGLE_DIR"):
        train_hf.main(args)
    monkeypatch.setenv("MVSA_SINGLE_DIR", assets["raw"])
    metrics = train_hf.main(args + ["--fusion", "text_only", "--num_train_epochs", "1"])
    assert metrics["test_samples"] == len(build_mvsa(assets["raw"], num_proc=1)["test"])


def test_local_evaluate_module():
    metric = load_sentiment_metrics()
    predictions, references = [0, 2, 1, 2, 2, 0], [0, 2, 2, 2, 1, 1]
    result = metric.compute(predictions=predictions, references=references, labels=["negative", "neutral", "positive"])
    assert result["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    assert result["macro_f1"] == pytest.approx(f1_score(references, predictions, average="macro"))
    assert result["weighted_f1"] == pytest.approx(f1_score(references, predictions, average="weighted"))
    assert result["f1_positive"] == pytest.approx(f1_score(references, predictions, average=None)[2])


@pytest.mark.slow
def test_torchrun_cpu_two_processes(assets, tmp_path):
    """CPU DDP the documented way: `torchrun --nproc_per_node 2 train_hf.py ... --use_cpu true` (accelerate 1.x's
    `launch --cpu` starts a single process whatever `--num_processes` says)."""
    output_dir = tmp_path / "ddp"
    args = tiny_args(
        assets, output_dir, "--fusion", "hstec", "--num_train_epochs", "2", "--freeze_vision_backbone", "true"
    )
    run = run_script(
        ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "train_hf.py", *args]
        + ["--use_cpu", "true"]
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "Process rank: 0" in log and "Process rank: 1" in log and "distributed: True" in log
    assert "unused parameters" not in log.lower()
    train_size = len(build_mvsa(assets["raw"], num_proc=1)["train"])
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2 * -(-train_size // (8 * 2))  # each step takes 8 posts on each of 2 processes
    assert len(list(output_dir.glob("model*.safetensors"))) == 1
    assert AutoModelForSequenceClassification.from_pretrained(output_dir).config.fusion == "hstec"


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(assets, tmp_path):
    common = ["--fusion", "cmac", "--num_train_epochs", "4", "--early_stopping_patience", "0", "--seed", "5"]
    reference = run_script(["train_hf.py", *tiny_args(assets, tmp_path / "a", *common)])
    assert reference.returncode == 0, reference.stderr[-3000:]

    steps_per_epoch = json.loads((tmp_path / "a" / "trainer_state.json").read_text())["global_step"] // 4
    killed = run_script(
        ["-c", KILLING_RUN, *tiny_args(assets, tmp_path / "b", *common)],
        env_extra={"KILL_AT_STEP": str(2 * steps_per_epoch)},
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "test_results.json").exists()
    assert (tmp_path / "b" / f"checkpoint-{2 * steps_per_epoch}").is_dir()

    resumed = run_script(["train_hf.py", *tiny_args(assets, tmp_path / "b", *common)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming this run from {tmp_path / 'b'}" in (resumed.stdout + resumed.stderr).lower()

    def results(name):
        values = json.loads((tmp_path / name / "test_results.json").read_text())
        return {k: v for k, v in values.items() if "runtime" not in k and "per_second" not in k}

    assert results("a") == results("b")
    history = [json.loads((tmp_path / n / "trainer_state.json").read_text())["log_history"] for n in ("a", "b")]
    strip = [
        [{k: v for k, v in e.items() if "runtime" not in k and "per_second" not in k} for e in h] for h in history
    ]
    assert strip[0][:-1] == strip[1][:-1]  # every per-epoch loss and validation metric


@pytest.mark.slow
def test_paper_configuration_trains_both_towers_at_their_own_learning_rates(mvsa_single_dir, tmp_path):
    """configs/paper_bert_resnet50.yaml as it is, with random towers of the real shapes (BERT-base, timm resnet50)
    in place of the Hub checkpoints: two steps on real posts; every part moves by about its own learning rate."""
    from transformers import set_seed

    from mmsa.testing_utils import TRAIN_ONLY_FLAGS, write_random_paper_towers

    tokenizer = ROOT / "backbones" / "text"  # bert-base-uncased's vocabulary, as the paper's tokenizer
    text, vision = write_random_paper_towers(tmp_path / "towers", tokenizer if tokenizer.is_dir() else None)
    output_dir = tmp_path / "run"
    argv = [
        str(ROOT / "configs" / "paper_bert_resnet50.yaml"),
        "--text_model_name_or_path",
        str(text),
        "--vision_model_name_or_path",
        str(vision),
        "--dataset_name_or_path",
        str(mvsa_single_dir),
        "--output_dir",
        str(output_dir),
        "--max_train_samples",
        "32",
        "--max_eval_samples",
        "4",
        "--max_steps",
        "2",
        *TRAIN_ONLY_FLAGS,
    ]
    # The model exactly as train_hf.py initialises it (same seed, same arguments), to measure how far training moved it.
    model_args, data_args, training_args = train_hf.parse_args(argv)
    set_seed(training_args.seed)
    before = train_hf.build_model(model_args, data_args)[0].state_dict()
    train_hf.main(argv)

    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2
    trained = load_file(output_dir / "model.safetensors")
    changes = {"text": 0.0, "vision": 0.0, "head": 0.0}
    for key, value in before.items():
        if value.is_floating_point() and "running_" not in key:
            part = (
                "text"
                if key.startswith("mmsa.text_model.")
                else "vision"
                if key.startswith("mmsa.vision_model.")
                else "head"
            )
            changes[part] = max(changes[part], (trained[key] - value).abs().max().item())
    config = yaml.safe_load((ROOT / "configs" / "paper_bert_resnet50.yaml").read_text())
    rates = {
        "text": config["text_learning_rate"],
        "vision": config["vision_learning_rate"],
        "head": config["head_learning_rate"],
    }
    assert rates == {"text": 5e-6, "vision": 5e-6, "head": 5e-5}
    # AdamW moves a weight by at most about lr per step (lr, then lr/2 with the linear schedule): a part without
    # gradients would not move, and the towers trained at the head's rate would move ten times as far.
    for part, lr in rates.items():
        assert 0.5 * lr <= changes[part] <= 3 * lr, (part, changes[part], lr)


def test_a_checkpoint_of_another_run_is_not_resumed(assets, tmp_path):
    output_dir = tmp_path / "run"
    common = ["--fusion", "naive_cat", "--num_train_epochs", "1", "--freeze_vision_backbone", "true"]
    train_hf.main(tiny_args(assets, output_dir, *common))
    first = (output_dir / "model.safetensors").read_bytes()
    checkpoint = next(output_dir.glob("checkpoint-*"))
    assert json.loads((checkpoint / RUN_FINGERPRINT).read_text())["model_args"]["fusion"] == "naive_cat"

    other_data = write_fake_mvsa(tmp_path / "other_raw", fake_mvsa_posts(50, seed=9))
    other = [a if a != assets["raw"] else str(other_data) for a in tiny_args(assets, output_dir, *common)]
    with pytest.raises(
        ValueError, match="holds a checkpoint of another run, not resumed: dataset: .*--overwrite_output_dir"
    ):
        train_hf.main(other)
    with pytest.raises(ValueError, match=r"model_args.head_learning_rate: 0.002 -> 0.01"):
        train_hf.main(tiny_args(assets, output_dir, *common, "--head_learning_rate", "1e-2"))
    # a run that holds training posts out for calibration trains on other posts: not the same run either
    with pytest.raises(ValueError, match=r"data_args.calibration_holdout: None -> 0.1"):
        train_hf.main(tiny_args(assets, output_dir, *common, "--calibration_holdout", "0.1"))
    assert (output_dir / "model.safetensors").read_bytes() == first

    train_hf.main(other + ["--overwrite_output_dir", "true"])
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] > 0 and (output_dir / "model.safetensors").read_bytes() != first
    assert json.loads((output_dir / "run_info.json").read_text())["dataset"] == str(other_data)


def test_one_class_training_data_is_warned_about_or_refused(tmp_path, assets, caplog):
    one_class = write_fake_mvsa(tmp_path / "raw", {i: ("positive,positive", f"i love this {i}") for i in range(1, 21)})
    args = [
        a if a != assets["raw"] else str(one_class)
        for a in tiny_args(assets, tmp_path / "run", "--fusion", "text_only", "--num_train_epochs", "1")
    ]
    with pytest.raises(ValueError, match=r"the train split holds a single class \(positive\).*\(--strict\)"):
        train_hf.main(args + ["--strict", "true"])
    with caplog.at_level("WARNING", logger="train_hf"):
        train_hf.main(args)
    assert "the train split holds a single class (positive)" in caplog.text


@pytest.mark.slow
def test_python_and_accelerate_launch_give_the_same_run(assets, tmp_path):
    """`accelerate launch` sets OMP_NUM_THREADS=1; train_hf.py sets the thread count itself, so both launchers
    train with the same float arithmetic: identical per-epoch losses and metrics."""
    common = ["--fusion", "cmac", "--num_train_epochs", "2", "--seed", "3", "--freeze_vision_backbone", "true"]
    plain = run_script(["train_hf.py", *tiny_args(assets, tmp_path / "python", *common)])
    assert plain.returncode == 0, plain.stderr[-3000:]
    accelerate = shutil.which("accelerate")
    launcher = (accelerate, "launch") if accelerate else (sys.executable, "-m", "accelerate.commands.launch")
    launched = run_script(
        ["--num_processes", "1", "train_hf.py", *tiny_args(assets, tmp_path / "accelerate", *common)],
        launcher=launcher,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]

    def history(name):
        entries = json.loads((tmp_path / name / "trainer_state.json").read_text())["log_history"]
        return [{k: v for k, v in e.items() if "runtime" not in k and "per_second" not in k} for e in entries]

    assert history("python") == history("accelerate")
    threads = {
        json.loads((tmp_path / n / "run_info.json").read_text())["torch_threads"] for n in ("python", "accelerate")
    }
    assert len(threads) == 1


def test_config_fields_are_overrides_with_defaults_in_mmsa_config(assets, tmp_path):
    from mmsa.training import parse_config_overrides

    as_flags = train_hf.parse_args(tiny_args(assets, tmp_path, "--fusion_num_layers", "2", "--text_pooling", "mean"))
    as_string = train_hf.parse_args(
        tiny_args(assets, tmp_path, "--config_overrides", "fusion_num_layers=2,text_pooling=mean")
    )
    expected = {"fusion_hidden_size": 16, "fusion_num_heads": 4, "fusion_num_layers": 2, "text_pooling": "mean"}
    assert parse_config_overrides(as_flags[0].config_overrides) == expected
    assert parse_config_overrides(as_string[0].config_overrides) == expected
    model = train_hf.build_model(as_flags[0], as_flags[1])[0]
    assert (model.config.fusion_num_layers, model.config.text_pooling, model.config.attention_dropout) == (
        2,
        "mean",
        0.4,
    )
    with pytest.raises(ValueError, match="no_such_field"):
        parse_config_overrides("no_such_field=1")


def test_evaluate_only_with_do_train_false(tiny_run, tmp_path):
    dataset = json.loads((tiny_run / "run_info.json").read_text())["dataset"]
    metrics = train_hf.main(
        ["--model_name_or_path", str(tiny_run), "--dataset_name_or_path", dataset, "--do_train", "false",
         "--output_dir", str(tmp_path / "eval"), "--feature_cache_dir", str(tmp_path / "cache"),
         "--disable_tqdm", "true"]
    )  # fmt: skip
    trained = json.loads((tiny_run / "test_results.json").read_text())
    for key in ("test_accuracy", "test_macro_f1", "test_weighted_f1"):
        assert metrics[key] == pytest.approx(trained[key])
    assert not list((tmp_path / "eval").glob("checkpoint-*"))
    assert (tmp_path / "eval" / "test_predictions.jsonl").read_text() == (
        tiny_run / "test_predictions.jsonl"
    ).read_text()
    with pytest.raises(ValueError, match="--model_name_or_path"):
        train_hf.main(["--do_train", "false", "--dataset_name_or_path", dataset, "--output_dir", str(tmp_path / "x")])
