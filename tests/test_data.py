import json
from pathlib import Path

import pytest
from datasets import load_dataset, load_from_disk
from huggingface_hub import DatasetCard, HfApi
from PIL import Image

from mmsa import data as mvsa
from mmsa.data import LABELS, MvsaFormatError, build_mvsa, clean_label, load_mvsa
from mmsa.testing_utils import fake_mvsa_posts, write_fake_mvsa


def build(root, **kwargs):
    return build_mvsa(root, return_report=True, num_proc=1, **kwargs)


def all_ids(dataset):
    return [i for split in dataset.values() for i in split["id"]]


def test_cleaning_rule():
    assert clean_label("positive", "positive") == "positive"
    assert clean_label("neutral", "negative") == "negative"
    assert clean_label("positive", "neutral") == "positive"
    assert clean_label("neutral", "neutral") == "neutral"
    assert clean_label("positive", "negative") is None and clean_label("negative", "positive") is None


def test_build_fake_release(tmp_path):
    posts = fake_mvsa_posts(60)
    dataset, report = build(write_fake_mvsa(tmp_path, posts))
    assert set(dataset) == {"train", "validation", "test"}
    assert dataset["train"].features["label"].names == list(LABELS)
    conflicts = sum(1 for labels, _ in posts.values() if labels == "positive,negative")
    assert report.skipped == {"label_conflict": conflicts} and report.kept == 60 - conflicts
    assert report.kept + sum(report.skipped.values()) == report.label_rows == 60
    ids = all_ids(dataset)
    assert len(ids) == len(set(ids)) == report.kept  # disjoint, and every kept post in exactly one split
    row = dataset["train"][0]
    labels, text = posts[int(row["id"])]
    assert row["text"] == text  # surrounding whitespace stripped, hashtags / mentions / URLs kept
    assert "#" in row["text"] and "@user" in row["text"] and "http://t.co/" in row["text"]
    expected = {
        "positive,positive": 2,
        "negative,negative": 0,
        "neutral,neutral": 1,
        "neutral,positive": 2,
        "negative,neutral": 0,
    }[labels]
    assert row["label"] == expected
    raw_bytes = (tmp_path / "data" / f"{row['id']}.jpg").read_bytes()
    stored = dataset["train"].cast_column("image", mvsa.ImageFeature(decode=False))[0]["image"]["bytes"]
    assert stored == raw_bytes  # original bytes, not re-encoded
    assert isinstance(row["image"], Image.Image)


def test_splits_are_stratified_and_deterministic(tmp_path):
    root = write_fake_mvsa(tmp_path, fake_mvsa_posts(200, seed=1))
    first, _ = build(root, seed=7)
    second, _ = build(root, seed=7)
    other, _ = build(root, seed=8)
    for name in first:
        assert first[name]["id"] == second[name]["id"]
    assert first["test"]["id"] != other["test"]["id"]
    sizes = {name: len(split) for name, split in first.items()}
    total = sum(sizes.values())
    assert abs(sizes["train"] / total - 0.8) < 0.03 and abs(sizes["test"] / total - 0.1) < 0.03
    for label in range(3):
        share = [split["label"].count(label) / len(split) for split in first.values()]
        assert max(share) - min(share) < 0.08


def test_published_split_file_is_reused(tmp_path):
    root = write_fake_mvsa(tmp_path / "raw", {i: ("positive,positive", f"post {i}") for i in range(1, 11)})
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": [1, 2, 3, 4, 5, 6], "validation": [7, 99], "test": ["8", "9"]}))
    dataset, report = build(root, split_file=split_file)
    assert dataset["train"]["id"] == ["1", "2", "3", "4", "5", "6"]
    assert dataset["validation"]["id"] == ["7"] and dataset["test"]["id"] == ["8", "9"]
    assert report.skipped == {"not_in_split_file": 1} and report.kept == 9  # id 10 is not listed
    split_file.write_text(json.dumps({"train": [1], "validation": [1], "test": []}))
    with pytest.raises(MvsaFormatError, match="id 1 is in both"):
        build(root, split_file=split_file)


@pytest.mark.parametrize("n", [1, 3, 12])
def test_tiny_inputs(tmp_path, n):
    dataset, report = build(write_fake_mvsa(tmp_path, {i: ("neutral,negative", f"t{i}") for i in range(1, n + 1)}))
    assert sum(len(split) for split in dataset.values()) == report.kept == n


def test_text_encoding_is_found_not_mangled(tmp_path):
    posts = {
        1: ("positive,positive", b"Can't wait \xa1\xad \n"),
        2: ("neutral,neutral", b"\xa1\xb0quoted\xa1\xb1 \n"),
        3: ("negative,negative", "caf\u00e9 \u2026 \U0001f600"),
    }
    dataset, report = build(write_fake_mvsa(tmp_path, posts))
    texts = {row["id"]: row["text"] for split in dataset.values() for row in split}
    assert texts == {"1": "Can't wait \u2026", "2": "\u201cquoted\u201d", "3": "caf\u00e9 \u2026 \U0001f600"}
    assert report.text_encodings == {"gb18030": 2, "utf-8": 1}


def corrupt_release(root):
    """A release with one post for each kind of problem."""
    posts = {i: ("positive,positive", f"fine post {i}") for i in range(1, 21)}
    write_fake_mvsa(
        root,
        posts,
        extra_rows=[
            "21\tpositive,positive",  # label row whose files are missing
            "22\tpositive",  # malformed: no image label
            "23\tpositive,happy",  # unknown label word
            "5\tnegative,negative",  # duplicated id
            "24\tpositive\tnegative",  # malformed: too many fields
        ],
    )
    data = root / "data"
    (data / "2.jpg").unlink()  # missing image
    (data / "3.txt").unlink()  # missing text
    (data / "4.jpg").write_bytes(b"")  # zero-byte image
    (data / "6.jpg").write_bytes((data / "6.jpg").read_bytes()[:60])  # truncated image
    (data / "7.jpg").write_bytes(b"this is not a jpeg at all" * 10)  # undecodable image
    (data / "8.txt").write_bytes(b"  \r\n")  # empty text
    (data / "99.jpg").write_bytes((data / "1.jpg").read_bytes())  # file that no row labels
    return root


def test_bad_input_is_skipped_counted_and_reported(tmp_path):
    dataset, report = build(corrupt_release(tmp_path))
    assert dict(report.skipped) == {
        "missing_files": 1,
        "malformed_row": 2,
        "unknown_label": 1,
        "duplicate_id": 1,
        "missing_image": 1,
        "missing_text": 1,
        "empty_image": 1,
        "undecodable_image": 2,
        "empty_text": 1,
    }
    assert report.kept == 20 - 6  # posts 2, 3, 4, 6, 7 and 8 have broken files
    assert report.kept + sum(report.skipped.values()) == report.label_rows == 25
    assert report.unlabelled_files == ["99.jpg"]
    assert sorted(all_ids(dataset), key=int) == [str(i) for i in [1, 5] + list(range(9, 21))]
    by_id = {post["id"]: post for post in report.skipped_posts}
    assert by_id["6"]["reason"] == "undecodable_image" and "6.jpg" in by_id["6"]["detail"]
    assert by_id["5"]["reason"] == "duplicate_id" and by_id["5"]["line"] == 25
    assert by_id["23"]["detail"].startswith("unknown label word(s) ['happy']")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda root: (root / "data" / "2.jpg").unlink(), r"line 3 \(id 2\): missing_image: .*2\.jpg does not exist"),
        (lambda root: (root / "data" / "4.jpg").write_bytes(b""), r"id 4\): empty_image"),
        (lambda root: (root / "data" / "50.txt").write_text("x"), r"50\.txt: no row .* labels this file"),
    ],
)
def test_strict_raises_on_the_first_problem(tmp_path, mutate, message):
    root = write_fake_mvsa(tmp_path, {i: ("positive,positive", f"post {i}") for i in range(1, 6)})
    build(root, strict=True)  # a clean release passes
    mutate(root)
    with pytest.raises(MvsaFormatError, match=message):
        build(root, strict=True)


def test_strict_names_the_row_of_a_malformed_label(tmp_path):
    root = write_fake_mvsa(tmp_path, {1: ("positive,positive", "a")}, extra_rows=["2\tpositive;negative"])
    with pytest.raises(MvsaFormatError, match=r"labelResultAll.txt line 3 .*malformed_row.*'text,image'"):
        build(root, strict=True)


def test_labels_file_not_in_mvsa_format_fails_at_once(tmp_path):
    root = write_fake_mvsa(tmp_path, {1: ("positive,positive", "a")}, header="id,label")
    with pytest.raises(MvsaFormatError, match=r"line 1: expected the MVSA-single header 'ID\\ttext,image'"):
        build(root)
    with pytest.raises(MvsaFormatError, match="MVSA-multiple header"):
        build(write_fake_mvsa(tmp_path / "m", {1: ("positive,positive", "a")}), variant="multiple")
    with pytest.raises(MvsaFormatError, match="does not exist"):
        build(tmp_path / "nowhere")


def test_mvsa_multiple_majority_vote(tmp_path):
    posts = {
        1: (["positive,neutral", "positive,positive", "neutral,positive"], "a"),  # text pos, image pos -> positive
        2: (["negative,neutral", "negative,neutral", "positive,positive"], "b"),  # negative, neutral -> negative
        3: (["positive,neutral", "negative,negative", "neutral,positive"], "c"),  # text has no majority -> dropped
        4: (["positive,negative", "positive,negative", "neutral,neutral"], "d"),  # positive vs negative -> dropped
        5: (["neutral,neutral", "neutral,positive", "neutral,neutral"], "e"),  # neutral
    }
    dataset, report = build(write_fake_mvsa(tmp_path, posts, variant="multiple"), variant="multiple")
    rows = {row["id"]: row for split in dataset.values() for row in split}
    assert {i: LABELS[r["label"]] for i, r in rows.items()} == {"1": "positive", "2": "negative", "5": "neutral"}
    assert LABELS[rows["2"]["image_label"]] == "neutral"
    assert report.skipped == {"no_majority": 1, "label_conflict": 1}


def test_save_load_card_and_cli(tmp_path):
    raw = write_fake_mvsa(tmp_path / "raw", fake_mvsa_posts(30))
    mvsa.main(["build", "--raw_dir", str(raw), "--output_dir", str(tmp_path / "saved"), "--num_proc", "1"])
    built = build_mvsa(raw, num_proc=1)
    saved = load_from_disk(str(tmp_path / "saved"))
    for name in built:
        assert saved[name].features == built[name].features
        assert saved[name].to_dict() == built[name].to_dict()  # identical, image bytes included
    assert load_mvsa(tmp_path / "saved")["test"]["id"] == built["test"]["id"]
    assert load_mvsa(raw)["test"]["id"] == built["test"]["id"]

    report = json.loads((tmp_path / "saved" / "build_report.json").read_text())
    card = DatasetCard.load(tmp_path / "saved" / "README.md")
    assert card.data.license == "other" and "research" in card.data.license_name
    assert card.data.task_categories == ["text-classification", "image-classification"]
    assert card.data.size_categories == ["n<1K"]
    splits = {s["name"]: s["num_examples"] for s in card.data.dataset_info["splits"]}
    assert splits == report["split_counts"] == {name: len(split) for name, split in built.items()}
    assert [f["name"] for f in card.data.dataset_info["features"]] == list(built["train"].features)
    assert "Niu" in card.text and "GB18030" in card.text and "positive vs negative" in card.text
    test_counts = report["class_counts"]["test"]
    assert f"| test | {len(built['test'])} | {test_counts.get('negative', 0)} |" in card.text


def test_push_uploads_parquet_and_card_in_one_commit(tmp_path, monkeypatch):
    calls = []
    staged = tmp_path / "staged"

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        files = sorted(
            str(p.relative_to(kwargs["folder_path"])) for p in Path(kwargs["folder_path"]).rglob("*") if p.is_file()
        )
        calls.append(("files", files))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    dataset, report = build(write_fake_mvsa(tmp_path / "raw", fake_mvsa_posts(30)))
    url = mvsa.push_mvsa(dataset, report, "someone/mvsa-single", private=True, staging_dir=staged)
    assert url.endswith("someone/mvsa-single")
    (name, repo, kwargs), (name2, repo2, upload), (_, files) = calls
    assert (name, repo, kwargs["repo_type"], kwargs["private"]) == (
        "create_repo",
        "someone/mvsa-single",
        "dataset",
        True,
    )
    assert (name2, repo2, upload["repo_type"]) == ("upload_folder", "someone/mvsa-single", "dataset")
    assert upload["commit_message"] == f"Upload MVSA-Single ({report.kept} posts)"
    assert files == [
        "README.md",
        "build_report.json",
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
    ]
    # The parquet files are self-contained (image bytes embedded) and reload as the same dataset.
    reloaded = load_dataset(
        "parquet", data_files={s: str(staged / f"data/{s}-00000-of-00001.parquet") for s in dataset}
    )
    for split in dataset:
        assert reloaded[split]["id"] == dataset[split]["id"]
        assert reloaded[split][0]["image"].tobytes() == dataset[split][0]["image"].tobytes()


@pytest.mark.slow
def test_real_mvsa_single(mvsa_single_dir):
    """The real release: the published cleaning counts, and every text decoded without mojibake."""
    raw_non_utf8 = 0
    for path in (mvsa_single_dir / "data").glob("*.txt"):
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raw_non_utf8 += 1
    assert raw_non_utf8 == 1131
    dataset, report = build_mvsa(mvsa_single_dir, return_report=True)
    assert report.kept == 4511 and report.skipped == {"label_conflict": 358} and report.unlabelled_files == []
    labels = [label for split in dataset.values() for label in split["label"]]
    assert {name: labels.count(i) for i, name in enumerate(LABELS)} == {
        "positive": 2683,
        "negative": 1358,
        "neutral": 470,
    }
    assert {name: len(split) for name, split in dataset.items()} == {"train": 3608, "validation": 451, "test": 452}
    texts = [text for split in dataset.values() for text in split["text"]]
    assert not any(mark in text for text in texts for mark in ("\u00a1\u00ad", "\u00a1\u00b0", "\ufffd"))
    assert sum("\u2026" in text for text in texts) > 800
    assert report.text_encodings["gb18030"] + report.text_encodings["utf-8"] == 4511


def test_output_dir_is_not_overwritten_without_asking(tmp_path, monkeypatch):
    raw = write_fake_mvsa(tmp_path / "raw", fake_mvsa_posts(30))
    out = tmp_path / "saved"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    args = ["build", "--raw_dir", str(raw), "--output_dir", str(out), "--num_proc", "1"]
    with pytest.raises(SystemExit) as exit_info:
        mvsa.main(args)
    assert exit_info.value.code == 2 and (out / "README.md").read_text() == "my notes"

    mvsa.main(args + ["--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "build_report.json", "dataset_dict.json", "test", "train", "validation"]
    )
    first = load_from_disk(str(out))["test"]["id"]

    # A build that fails while saving leaves the dataset that was there intact.
    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("mmsa.dataset_card.mvsa_dataset_card", broken_card)
    with pytest.raises(RuntimeError, match="disk full"):
        mvsa.main(args + ["--overwrite", "--seed", "7"])
    assert load_from_disk(str(out))["test"]["id"] == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "saved"]  # no staging folder left behind


@pytest.mark.parametrize("case", ["space_separated", "header_only", "all_conflicting"])
def test_a_build_that_keeps_nothing_fails_with_the_reasons(tmp_path, case):
    posts = {i: ("positive,negative", f"text {i}") for i in range(1, 6)}
    raw = write_fake_mvsa(tmp_path / "raw", posts if case != "header_only" else {})
    if case == "space_separated":
        rows = ["ID\ttext,image"] + [f"{i} positive,positive" for i in range(1, 6)]
        (raw / "labelResultAll.txt").write_text("\r\n".join(rows) + "\r\n")
    with pytest.raises(MvsaFormatError, match="no post kept") as error:
        build(raw)
    expected = {
        "space_separated": "5 malformed_row",
        "header_only": "no label rows",
        "all_conflicting": "5 label_conflict",
    }[case]
    assert expected in str(error.value)
    with pytest.raises(SystemExit) as exit_info:
        mvsa.main(["build", "--raw_dir", str(raw), "--output_dir", str(tmp_path / "out"), "--num_proc", "1"])
    assert exit_info.value.code == 1 and not (tmp_path / "out").exists()


def test_single_class_splits_are_warned_about(tmp_path, caplog):
    raw = write_fake_mvsa(tmp_path / "raw", {i: ("positive,positive", f"good {i}") for i in range(1, 21)})
    with caplog.at_level("WARNING", logger="mmsa.data"):
        build(raw)
    assert "holds a single class (positive)" in caplog.text


def test_text_and_label_file_encodings(tmp_path):
    posts = fake_mvsa_posts(12)
    posts[1] = ("positive,positive", b"\xef\xbb\xbfhello with a BOM")
    raw = write_fake_mvsa(tmp_path / "raw", posts)
    dataset, report = build(raw)
    texts = {i: t for split in dataset.values() for i, t in zip(split["id"], split["text"])}
    assert texts["1"] == "hello with a BOM"

    label_file = raw / "labelResultAll.txt"
    utf8 = label_file.read_bytes()
    for encoded in (b"\xef\xbb\xbf" + utf8, utf8.decode().encode("utf-16")):
        label_file.write_bytes(encoded)
        assert all_ids(build(raw)[0]) == all_ids(dataset)
    label_file.write_bytes(utf8.replace(b"ID", b"I\xff"))
    with pytest.raises(MvsaFormatError, match=r"labelResultAll.txt: not UTF-8 text"):
        build(raw)


@pytest.mark.parametrize("bad_id", ["abc", "\u00b2", "12a"])
def test_non_numeric_ids_are_counted_skips(tmp_path, bad_id):
    raw = write_fake_mvsa(tmp_path / "raw", fake_mvsa_posts(12), extra_rows=[f"{bad_id}\tpositive,positive"])
    dataset, report = build(raw)
    assert report.skipped["malformed_row"] == 1
    assert report.kept + sum(report.skipped.values()) == report.label_rows
    with pytest.raises(MvsaFormatError, match=r"line 14 \(id .*\): malformed_row: id .* is not a number"):
        build(raw, strict=True)


def write_checksums(root: Path) -> None:
    import hashlib

    lines = [
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(root).as_posix()}"
        for path in sorted((root / "data").iterdir())
    ]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def test_data_check_reports_what_a_folder_holds(tmp_path, capsys):
    from mmsa.cli import main as mmsa_main

    posts = fake_mvsa_posts(30, seed=2)
    posts[7] = ("positive,positive", "café ¡­".encode("gb18030"))  # not UTF-8: decoded as GB18030
    root = write_fake_mvsa(tmp_path / "raw", posts, extra_rows=["999\tpositive,happy"])
    write_checksums(root)
    result = mvsa.check_mvsa(root)
    conflicts = sum(labels == "positive,negative" for labels, _ in posts.values())
    assert result["text_files"] == result["image_files"] == 30
    assert result["label_rows"] == 31 and result["kept"] == 30 - conflicts
    assert result["skipped"] == {"label_conflict": conflicts, "unknown_label": 1}
    assert result["text_files_not_utf8"] == 1 and result["text_files_undecodable"] == 0
    assert result["checksums"] == {"listed": 60, "ok": 60, "mismatched": [], "missing": []}
    assert result["usable"]
    assert mmsa_main(["data", "check", str(root)]) == 0
    printed = capsys.readouterr().out
    assert f"posts kept: {30 - conflicts}" in printed and "text files not UTF-8: 1" in printed
    assert "checksums (SHA256SUMS): 60 of 60 match" in printed

    # a file altered after the checksums were taken, and one removed: named, and the folder is not usable
    (root / "data" / "3.jpg").write_bytes(b"\xff\xd8 not the original")
    (root / "data" / "4.txt").unlink()
    with pytest.raises(SystemExit) as stop:
        mmsa_main(["data", "check", str(root)])
    assert stop.value.code == 1
    printed = capsys.readouterr().out
    assert "differs: data/3.jpg" in printed and "missing: data/4.txt" in printed and "usable: NO" in printed
    assert mvsa.main(["check", str(root), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["checksums"]["mismatched"] == ["data/3.jpg"]


def test_data_check_of_a_folder_that_is_no_release(tmp_path, capsys):
    from mmsa.cli import main as mmsa_main

    with pytest.raises(SystemExit) as stop:
        mmsa_main(["data", "check", str(tmp_path)])
    assert stop.value.code == 1
    assert f"{tmp_path / 'data'} does not exist" in capsys.readouterr().err
