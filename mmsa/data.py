"""MVSA-Single and MVSA-Multiple as `datasets.DatasetDict`s, built from the raw releases.

    python -m mmsa.data build --raw_dir MVSA_Single --output_dir mvsa_single [--strict] [--push_to_hub USER/NAME]
    python -m mmsa.data push --dataset_dir mvsa_single --repo_id USER/NAME
    python -m mmsa.data check MVSA_Single      # also `mmsa data check`: what a raw folder holds, checksums verified

A raw release is a folder with `data/<id>.txt`, `data/<id>.jpg` and `labelResultAll.txt` (tab-separated, header
`ID\\ttext,image`; MVSA-Multiple has three `text,image` columns, one per annotator). Labels are cleaned with the rule
used since MultiSentiNet: both labels agree -> that label; one is neutral -> the other; positive vs negative -> the
post is dropped. For MVSA-Multiple each modality first takes the label at least two of three annotators agree on.

Every problem with the input (missing or empty files, undecodable images, unknown label words, malformed or duplicated
rows, files no row labels) skips that post with a reason that is counted and listed in the build report
(`build_report.json` beside a saved dataset); `strict=True` raises on the first one instead.
"""

import argparse
import codecs
import io
import json
import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image

from .configuration_mmsa import SENTIMENT_LABELS


logger = logging.getLogger(__name__)

LABELS = SENTIMENT_LABELS
"""The MVSA classes (the model's default labels too), in the order of their ids."""
SPLITS = ("train", "validation", "test")
SPLIT_RATIOS = (0.8, 0.1, 0.1)
LABEL_FILE = "labelResultAll.txt"
REPORT_FILE = "build_report.json"
ANNOTATORS = {"single": 1, "multiple": 3}
TEXT_ENCODINGS = ("utf-8", "gb18030")
"""Text files are UTF-8 or, for 1131 MVSA-Single posts, GB18030 (e.g. b"\\xa1\\xad" is "…"); tried in this order."""

FEATURES = Features(
    {
        "id": Value("string"),
        "text": Value("string"),
        "image": ImageFeature(),
        "label": ClassLabel(names=list(LABELS)),
        "text_label": ClassLabel(names=list(LABELS)),
        "image_label": ClassLabel(names=list(LABELS)),
    }
)


class MvsaFormatError(ValueError):
    """The raw release is not in the MVSA format, or (with `strict=True`) one of its posts is unusable."""


@dataclass
class BuildReport:
    """What a build kept and skipped; `kept + sum(skipped.values()) == label_rows`."""

    raw_dir: str
    variant: str
    label_rows: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_posts: list = field(default_factory=list)
    unlabelled_files: list = field(default_factory=list)
    text_encodings: Counter = field(default_factory=Counter)
    split_counts: dict = field(default_factory=dict)
    class_counts: dict = field(default_factory=dict)
    seed: int | None = None
    split_file: str | None = None
    conflicts_in_train: int = 0
    """Posts whose text and image labels conflict, added to the train split with no post label (`conflicts_in_train`);
    they are also counted in `skipped["label_conflict"]`, as posts the post labels leave out."""

    def skip(self, reason: str, post_id: str | None, line: int | None, detail: str, strict: bool):
        where = f"{self.raw_dir}/{LABEL_FILE} line {line}" if line is not None else self.raw_dir
        if strict:
            raise MvsaFormatError(f"{where} (id {post_id}): {reason}: {detail}")
        self.skipped[reason] += 1
        self.skipped_posts.append({"id": post_id, "line": line, "reason": reason, "detail": detail})

    def to_dict(self) -> dict:
        return {
            "raw_dir": self.raw_dir,
            "variant": self.variant,
            "label_rows": self.label_rows,
            "kept": self.kept,
            "skipped_total": sum(self.skipped.values()),
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_posts": self.skipped_posts,
            "unlabelled_files": self.unlabelled_files,
            "text_encodings": dict(self.text_encodings),
            "split_counts": self.split_counts,
            "class_counts": self.class_counts,
            "seed": self.seed,
            "split_file": self.split_file,
            "conflicts_in_train": self.conflicts_in_train,
        }

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return (
            f"MVSA-{self.variant}: {self.label_rows} label rows, kept {self.kept}, skipped {sum(self.skipped.values())} "
            f"({skipped}); {len(self.unlabelled_files)} unlabelled files; splits {self.split_counts}"
            + (
                f" ({self.conflicts_in_train} conflicting posts in train, for the modality heads only)"
                if self.conflicts_in_train
                else ""
            )
        )


# --- labels -------------------------------------------------------------------------------------------------------


def clean_label(text_label: str, image_label: str) -> str | None:
    """The MultiSentiNet rule: agreement -> that label, one neutral -> the other, positive vs negative -> None."""
    if text_label == image_label:
        return text_label
    if text_label == "neutral":
        return image_label
    if image_label == "neutral":
        return text_label
    return None


def majority(labels: list[str]) -> str | None:
    """The label more than half of the annotators gave (for one annotator, that annotator's), else None."""
    label, count = Counter(labels).most_common(1)[0]
    return label if count * 2 > len(labels) else None


def read_label_rows(raw_dir: Path, variant: str):
    """Yields `(line_number, fields)` for every non-empty row after the header; checks the header first."""
    path = raw_dir / LABEL_FILE
    if not path.is_file():
        raise MvsaFormatError(f"{path} does not exist: an MVSA release holds {LABEL_FILE} beside data/.")
    raw = path.read_bytes()
    encoding = "utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        lines = raw.decode(encoding).splitlines()
    except UnicodeDecodeError as error:
        raise MvsaFormatError(
            f"{path}: not {encoding.removesuffix('-sig').upper()} text (byte {error.start}: {error.reason}); "
            "MVSA label files are UTF-8 (a UTF-8 or UTF-16 byte-order mark is accepted)."
        ) from None
    expected = "\t".join(["ID"] + ["text,image"] * ANNOTATORS[variant])
    header = lines[0].strip() if lines else ""
    if header != expected:
        raise MvsaFormatError(
            f"{path} line 1: expected the MVSA-{variant} header {expected!r}, found {header[:80]!r}. "
            f"Is this an MVSA-{variant.capitalize()} labelResultAll.txt?"
        )
    for number, line in enumerate(lines[1:], start=2):
        if line.strip():
            yield number, line.rstrip("\r\n").split("\t")


def parse_labels(fields: list[str], variant: str) -> tuple[str, list[tuple[str, str]]]:
    """Returns `(id, [(text_label, image_label), ...])`; raises ValueError with what is wrong."""
    annotators = ANNOTATORS[variant]
    if len(fields) != 1 + annotators:
        raise ValueError(f"expected {1 + annotators} tab-separated fields, found {len(fields)}")
    post_id = fields[0].strip()
    if not (post_id.isascii() and post_id.isdigit()):
        raise ValueError(f"id {post_id!r} is not a number")
    pairs = []
    for value in fields[1:]:
        pair = [word.strip().lower() for word in value.split(",")]
        if len(pair) != 2:
            raise ValueError(f"expected 'text,image' labels, found {value!r}")
        pairs.append(tuple(pair))
    return post_id, pairs


# --- files --------------------------------------------------------------------------------------------------------


def decode_text(raw: bytes) -> tuple[str, str]:
    """Decodes a post's text file; returns `(text, encoding)`."""
    for encoding in TEXT_ENCODINGS:
        try:
            return raw.decode(encoding).removeprefix("\ufeff"), encoding  # a UTF-8 byte-order mark is no text
        except UnicodeDecodeError:
            continue
    raise UnicodeDecodeError("gb18030", raw, 0, len(raw), "neither UTF-8 nor GB18030")


def check_post(data_dir: Path, post_id: str):
    """Reads and checks one post's files. Returns `(text, encoding, image_bytes)` or `(reason, detail)`."""
    text_path, image_path = data_dir / f"{post_id}.txt", data_dir / f"{post_id}.jpg"
    missing = [p.name for p in (text_path, image_path) if not p.is_file()]
    if len(missing) == 2:
        return ("missing_files", f"neither {text_path.name} nor {image_path.name} exists")
    if missing:
        return (
            "missing_text" if missing[0].endswith(".txt") else "missing_image",
            f"{data_dir / missing[0]} does not exist",
        )
    try:
        text, encoding = decode_text(text_path.read_bytes())
    except UnicodeDecodeError as error:
        return ("undecodable_text", f"{text_path}: {error}")
    text = text.strip()
    if not text:
        return ("empty_text", f"{text_path} holds no text")
    image_bytes = image_path.read_bytes()
    if not image_bytes:
        return ("empty_image", f"{image_path} is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            image.load()  # decodes every pixel: truncated files fail here
    except Exception as error:  # PIL raises many types for broken files
        return ("undecodable_image", f"{image_path}: {type(error).__name__}: {error}")
    return (text, encoding, image_bytes)


def _check_posts(args):
    data_dir, post_ids = args
    return [check_post(Path(data_dir), post_id) for post_id in post_ids]


def check_posts(data_dir: Path, post_ids: list[str], num_proc: int | None) -> list:
    """`check_post` over many posts, in `num_proc` processes (default: all cores)."""
    num_proc = num_proc or os.cpu_count() or 1
    if num_proc <= 1 or len(post_ids) < 64:
        return [check_post(data_dir, post_id) for post_id in post_ids]
    chunks = [post_ids[i::num_proc] for i in range(num_proc)]
    with ProcessPoolExecutor(num_proc) as pool:
        results = list(pool.map(_check_posts, [(str(data_dir), chunk) for chunk in chunks]))
    by_id = {}
    for chunk, chunk_results in zip(chunks, results):
        by_id.update(zip(chunk, chunk_results))
    return [by_id[post_id] for post_id in post_ids]


# --- splits -------------------------------------------------------------------------------------------------------


def stratified_split(ids: list[str], labels: list[int], seed: int) -> dict[str, list[str]]:
    """A stratified 8:1:1 split. Each class's ids are sorted numerically and shuffled with a seeded NumPy
    `RandomState` (same result on every machine and run), then cut into train / validation / test."""
    rng = np.random.RandomState(seed)
    splits = {name: [] for name in SPLITS}
    for label in sorted(set(labels)):
        members = sorted((i for i, lab in zip(ids, labels) if lab == label), key=int)
        members = [members[i] for i in rng.permutation(len(members))]
        n_train = int(round(len(members) * SPLIT_RATIOS[0]))
        n_validation = int(round(len(members) * SPLIT_RATIOS[1]))
        splits["train"] += members[:n_train]
        splits["validation"] += members[n_train : n_train + n_validation]
        splits["test"] += members[n_train + n_validation :]
    return {name: sorted(members, key=int) for name, members in splits.items()}


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    """A published split: JSON `{"train": [ids], "validation": [ids], "test": [ids]}`."""
    try:
        splits = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MvsaFormatError(f"split file {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MvsaFormatError(f"{path}: not a JSON split file ({error})") from None
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        raise MvsaFormatError(f"{path}: expected a JSON object with exactly the keys {list(SPLITS)}.")
    seen = {}
    for name in SPLITS:
        ids = splits[name]
        if not isinstance(ids, list):
            raise MvsaFormatError(f"{path}: {name!r} must be a list of post ids, got {type(ids).__name__}")
        for position, post_id in enumerate(ids):
            if isinstance(post_id, bool) or not isinstance(post_id, (str, int)) or not str(post_id).strip():
                raise MvsaFormatError(
                    f"{path}: {name!r} item {position} must be a post id (a string or an integer), got {post_id!r}"
                )
            post_id = str(post_id)
            if post_id in seen:
                raise MvsaFormatError(f"{path}: id {post_id} is in both {seen[post_id]!r} and {name!r}.")
            seen[post_id] = name
    return {name: [str(i) for i in splits[name]] for name in SPLITS}


# --- build --------------------------------------------------------------------------------------------------------


def label_candidates(raw_dir: Path, variant: str, report, strict: bool, conflicts_in_train: bool):
    """Step 1 of a build: every label row to a candidate post `{id: (line, text_label, image_label, label)}`
    (malformed, duplicate, unknown, undecided and conflicting rows are skipped and counted), the conflicting posts
    too when `conflicts_in_train` (label None), and the line of every labelled id."""
    candidates = {}  # id -> (line, text_label, image_label, label)
    conflicts = {}  # the same, label None, for conflicts_in_train
    seen_lines = {}
    for line, fields in read_label_rows(raw_dir, variant):
        report.label_rows += 1
        try:
            post_id, pairs = parse_labels(fields, variant)
        except ValueError as error:
            report.skip("malformed_row", fields[0] if fields else None, line, str(error), strict)
            continue
        if post_id in seen_lines:
            report.skip(
                "duplicate_id", post_id, line, f"id {post_id} already labelled on line {seen_lines[post_id]}", strict
            )
            continue
        seen_lines[post_id] = line
        unknown = sorted({word for pair in pairs for word in pair if word not in LABELS})
        if unknown:
            report.skip(
                "unknown_label", post_id, line, f"unknown label word(s) {unknown}; expected {list(LABELS)}", strict
            )
            continue
        text_label = majority([pair[0] for pair in pairs])
        image_label = majority([pair[1] for pair in pairs])
        if text_label is None or image_label is None:
            report.skip("no_majority", post_id, line, f"annotators disagree: {pairs}", strict=False)
            continue
        label = clean_label(text_label, image_label)
        if label is None:
            report.skip("label_conflict", post_id, line, f"text {text_label} vs image {image_label}", strict=False)
            if conflicts_in_train:
                conflicts[post_id] = (line, text_label, image_label, None)
            continue
        candidates[post_id] = (line, text_label, image_label, label)

    return candidates, conflicts, seen_lines


def count_unlabelled_files(raw_dir: Path, data_dir: Path, labelled: set, report, strict: bool) -> None:
    """Step 2: files of `data/` that no label row names are counted in the report (refused with `strict`)."""
    for path in sorted(data_dir.iterdir()):
        if path.name.startswith("."):
            continue
        if path.stem not in labelled:
            if strict:
                raise MvsaFormatError(f"{path}: no row of {raw_dir / LABEL_FILE} labels this file.")
            report.unlabelled_files.append(path.name)


def read_records(data_dir: Path, candidates: dict, conflicts: dict, report, strict: bool, num_proc):
    """Step 3: the text and image of every candidate post, read and checked (unreadable ones skipped and counted):
    the kept posts' records and the conflicting posts' (label -1)."""
    post_ids = sorted({**candidates, **conflicts}, key=int)
    records, conflict_records = {}, {}
    for post_id, result in zip(post_ids, check_posts(data_dir, post_ids, num_proc)):
        line, text_label, image_label, label = candidates.get(post_id) or conflicts[post_id]
        if len(result) == 2:
            if post_id in candidates:  # a conflicting post is already counted as skipped
                report.skip(result[0], post_id, line, result[1], strict)
            continue
        text, encoding, image_bytes = result
        record = {
            "id": post_id,
            "text": text,
            "image": {"bytes": image_bytes, "path": f"{post_id}.jpg"},
            "label": LABELS.index(label) if label is not None else -1,
            "text_label": LABELS.index(text_label),
            "image_label": LABELS.index(image_label),
        }
        if post_id in candidates:
            report.text_encodings[encoding] += 1
            records[post_id] = record
        else:
            conflict_records[post_id] = record
    report.kept = len(records)

    return records, conflict_records


def assign_splits(records: dict, conflict_records: dict, candidates: dict, report, seed, split_file, strict):
    """Step 4: the ids of each split: the split file's, or a stratified 8:1:1 split drawn with `seed`; conflicting
    posts go to train only."""
    kept_ids = list(records)
    if split_file:
        splits = read_split_file(split_file)
        listed = {post_id for members in splits.values() for post_id in members}
        for post_id in sorted(set(kept_ids) - listed, key=int):
            report.skip("not_in_split_file", post_id, candidates[post_id][0], f"{split_file} does not list it", strict)
        missing = sorted(listed - set(kept_ids), key=lambda i: (not i.isdigit(), int(i) if i.isdigit() else i))
        if missing:
            logger.warning("%d ids of %s are not kept posts (first: %s)", len(missing), split_file, missing[:5])
        splits = {name: [i for i in members if i in records] for name, members in splits.items()}
        report.kept = sum(len(members) for members in splits.values())
    else:
        splits = stratified_split(kept_ids, [records[i]["label"] for i in kept_ids], seed)

    if conflict_records:
        records.update(conflict_records)
        splits["train"] = sorted(splits["train"] + list(conflict_records), key=int)
        report.conflicts_in_train = len(conflict_records)
    return splits


def build_mvsa(
    raw_dir: str | Path,
    variant: str = "single",
    seed: int = 42,
    strict: bool = False,
    split_file: str | Path | None = None,
    num_proc: int | None = None,
    return_report: bool = False,
    conflicts_in_train: bool = False,
):
    """Builds the `DatasetDict` (train / validation / test) of a raw MVSA release.

    Args:
        raw_dir: the release folder (`data/`, `labelResultAll.txt`).
        variant: `"single"` (one annotator) or `"multiple"` (three annotators, majority vote per modality).
        seed: seed of the stratified 8:1:1 split.
        strict: raise `MvsaFormatError` on the first unusable post instead of skipping and reporting it.
        split_file: a JSON split (ids per split) to reuse instead of drawing one.
        num_proc: processes that read and decode the files (default: all cores).
        return_report: also return the `BuildReport`.
        conflicts_in_train: also add the posts whose text and image labels conflict (positive against negative) to
            the train split, with `label` -1 (no post label: the post loss ignores them) and their `text_label` and
            `image_label`, for the modality heads. They never enter validation or test, and the split of the other
            posts is the same as without them.
    """
    if variant not in ANNOTATORS:
        raise ValueError(f"variant must be one of {list(ANNOTATORS)}, got {variant!r}")
    raw_dir = Path(raw_dir)
    data_dir = raw_dir / "data"
    if not data_dir.is_dir():
        raise MvsaFormatError(f"{data_dir} does not exist: an MVSA release holds data/<id>.txt and data/<id>.jpg.")
    report = BuildReport(
        raw_dir=str(raw_dir),
        variant=variant,
        seed=None if split_file else seed,
        split_file=str(split_file) if split_file else None,
    )

    candidates, conflicts, seen_lines = label_candidates(raw_dir, variant, report, strict, conflicts_in_train)
    count_unlabelled_files(raw_dir, data_dir, set(seen_lines), report, strict)
    records, conflict_records = read_records(data_dir, candidates, conflicts, report, strict, num_proc)
    splits = assign_splits(records, conflict_records, candidates, report, seed, split_file, strict)
    dataset = DatasetDict(
        {
            name: Dataset.from_list([records[i] for i in members], features=FEATURES, split=name)
            if members
            else Dataset.from_dict({key: [] for key in FEATURES}, features=FEATURES, split=name)
            for name, members in splits.items()
        }
    )
    report.split_counts = {name: len(members) for name, members in splits.items()}
    report.class_counts = {
        name: {LABELS[k]: v for k, v in sorted(Counter(records[i]["label"] for i in members).items()) if k >= 0}
        for name, members in splits.items()
    }
    if report.kept == 0:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(report.skipped.items())) or "no label rows"
        raise MvsaFormatError(
            f"{raw_dir}: no post kept ({report.label_rows} label rows; {reasons}); nothing to build a dataset from."
        )
    for name, counts in report.class_counts.items():
        if not counts:
            logger.warning("The %s split of %s is empty.", name, raw_dir)
        elif len(counts) == 1:
            logger.warning("The %s split of %s holds a single class (%s).", name, raw_dir, next(iter(counts)))
    logger.info(report.summary())
    return (dataset, report) if return_report else dataset


def is_raw_release(path: str | Path) -> bool:
    return (Path(path) / LABEL_FILE).is_file()


def load_mvsa(path_or_repo: str | Path, variant: str = "single", seed: int = 42, **build_kwargs) -> DatasetDict:
    """A raw release folder (built on the fly), a `save_to_disk` folder, or a Hub dataset id / parquet folder."""
    path = Path(path_or_repo)
    if path.is_dir():
        if is_raw_release(path):
            return build_mvsa(path, variant=variant, seed=seed, **build_kwargs)
        if (path / "dataset_dict.json").is_file():
            return load_from_disk(str(path))
        if not any(path.iterdir()):
            raise MvsaFormatError(
                f"{path} is an empty folder: expected a raw MVSA release ({LABEL_FILE} beside data/) or a dataset "
                "saved by `python -m mmsa.data build`"
            )
    elif path.exists():
        raise MvsaFormatError(f"{path} is a file: expected a raw MVSA release folder or a saved dataset folder")
    elif str(path_or_repo).startswith((".", "/", "~")) or str(path_or_repo).count("/") != 1:
        raise MvsaFormatError(
            f"{path_or_repo} does not exist: expected a raw MVSA release folder, a saved dataset folder or a Hub "
            "dataset id (user/name)"
        )
    try:
        return load_dataset(str(path_or_repo))
    except Exception as error:  # a folder that datasets cannot read, or a Hub id that cannot be reached
        raise MvsaFormatError(
            f"{path_or_repo} cannot be loaded as a dataset ({type(error).__name__}: {error}); expected a raw MVSA "
            "release folder, a saved dataset folder or a Hub dataset id"
        ) from error


def save_mvsa(dataset: DatasetDict, report: BuildReport, output_dir: str | Path, overwrite: bool = False) -> Path:
    """`save_to_disk` plus `build_report.json` and the dataset card (`README.md`).

    A non-empty `output_dir` is refused unless `overwrite`; then the new dataset is written to a temporary folder
    beside it and swapped in only once complete, so a failed save leaves the old dataset as it was.
    """
    from .dataset_card import mvsa_dataset_card
    from .file_utils import atomic_folder

    output_dir = Path(output_dir)
    with atomic_folder(output_dir, overwrite=overwrite, what="output folder") as staging:
        dataset.save_to_disk(str(staging))
        (staging / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
        mvsa_dataset_card(dataset, report).save(staging / "README.md")
    return output_dir


def push_mvsa(
    dataset: DatasetDict,
    report: BuildReport | dict,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    staging_dir: str | Path | None = None,
) -> str:
    """Uploads the dataset to the Hub as parquet (image bytes embedded) with its card, in one commit."""
    import tempfile

    from huggingface_hub import HfApi

    from .dataset_card import mvsa_dataset_card

    report_dict = report.to_dict() if isinstance(report, BuildReport) else report
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(staging_dir or tmp)
        for name, split in dataset.items():
            (folder / "data").mkdir(parents=True, exist_ok=True)
            split.to_parquet(str(folder / "data" / f"{name}-00000-of-00001.parquet"))
        (folder / REPORT_FILE).write_text(json.dumps(report_dict, indent=2, ensure_ascii=False) + "\n")
        mvsa_dataset_card(dataset, report_dict).save(folder / "README.md")
        api = HfApi(token=token)
        repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(folder),
            commit_message=f"Upload MVSA-{report_dict['variant'].capitalize()} ({report_dict['kept']} posts)",
        )
    return str(repo_url)


CHECKSUM_FILE = "SHA256SUMS"


def verify_checksums(raw_dir: Path) -> dict | None:
    """Verifies `raw_dir/SHA256SUMS` (lines of `<sha256>  <path>`, as `sha256sum -c` reads them): the number of files
    that match, and the paths that differ or are missing. `None` when the release has no such file."""
    import hashlib

    listing = raw_dir / CHECKSUM_FILE
    if not listing.is_file():
        return None
    result = {"listed": 0, "ok": 0, "mismatched": [], "missing": []}
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().removeprefix("*")
        if len(digest) != 64 or not name:
            raise MvsaFormatError(f"{listing} line {number}: expected '<sha256>  <path>', got {line[:80]!r}")
        result["listed"] += 1
        path = raw_dir / name
        if not path.is_file():
            result["missing"].append(name)
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest.lower():
            result["mismatched"].append(name)
        else:
            result["ok"] += 1
    return result


def check_mvsa(raw_dir: str | Path, variant: str = "single", num_proc: int | None = None) -> dict:
    """What a raw MVSA folder holds, before anything is trained on it: its files, its label rows, the posts a build
    keeps (per class) and skips (per reason), the text files that are not UTF-8 (decoded as GB18030) or not
    decodable at all, and, where the release ships `SHA256SUMS`, which files match it. `usable` is true when the
    build keeps posts and no listed file differs from its checksum."""
    raw_dir = Path(raw_dir)
    data_dir = raw_dir / "data"
    if not raw_dir.is_dir():
        raise MvsaFormatError(f"{raw_dir} is not a folder")
    texts = sorted(data_dir.glob("*.txt")) if data_dir.is_dir() else []
    encodings = Counter()
    for path in texts:
        try:
            encodings[decode_text(path.read_bytes())[1]] += 1
        except UnicodeDecodeError:
            encodings["undecodable"] += 1
    checksums = verify_checksums(raw_dir)
    _, report = build_mvsa(raw_dir, variant=variant, num_proc=num_proc, return_report=True)
    return {
        "raw_dir": str(raw_dir),
        "variant": variant,
        "text_files": len(texts),
        "image_files": len(list(data_dir.glob("*.jpg"))),
        "label_rows": report.label_rows,
        "kept": report.kept,
        "class_counts": report.class_counts,
        "skipped": dict(sorted(report.skipped.items())),
        "unlabelled_files": len(report.unlabelled_files),
        "text_files_not_utf8": encodings["gb18030"] + encodings["undecodable"],
        "text_files_undecodable": encodings["undecodable"],
        "checksums": checksums,
        "usable": report.kept > 0 and not (checksums and checksums["mismatched"]),
    }


def check_summary(result: dict) -> str:
    """`check_mvsa`'s result as the lines `mmsa data check` prints."""
    skipped = ", ".join(f"{n} {reason}" for reason, n in result["skipped"].items()) or "none"
    totals = Counter()
    for counts in result["class_counts"].values():  # per split
        totals.update(counts)
    classes = ", ".join(f"{totals[label]} {label}" for label in LABELS)
    splits = ", ".join(f"{sum(counts.values())} {split}" for split, counts in result["class_counts"].items())
    lines = [
        f"{result['raw_dir']} (MVSA-{result['variant']})",
        f"  files: {result['text_files']} texts, {result['image_files']} images; "
        f"{result['unlabelled_files']} files no label row names",
        f"  label rows: {result['label_rows']}",
        f"  posts kept: {result['kept']} ({classes}; split seed 42: {splits})",
        f"  posts skipped: {sum(result['skipped'].values())} ({skipped})",
        f"  text files not UTF-8: {result['text_files_not_utf8']} "
        f"(decoded as GB18030: {result['text_files_not_utf8'] - result['text_files_undecodable']}, "
        f"undecodable: {result['text_files_undecodable']})",
    ]
    checksums = result["checksums"]
    if checksums is None:
        lines.append(f"  checksums: no {CHECKSUM_FILE} file")
    else:
        lines.append(
            f"  checksums ({CHECKSUM_FILE}): {checksums['ok']} of {checksums['listed']} match, "
            f"{len(checksums['mismatched'])} differ, {len(checksums['missing'])} missing"
        )
        lines += [f"    differs: {name}" for name in checksums["mismatched"][:20]]
        lines += [f"    missing: {name}" for name in checksums["missing"][:20]]
    lines.append("  usable: yes" if result["usable"] else "  usable: NO")
    return "\n".join(lines)


def add_check_command(commands, prog: str) -> None:
    """The `check` subcommand, shared by `python -m mmsa.data` and `mmsa data`."""
    check = commands.add_parser(
        "check",
        help="what a raw MVSA folder holds: posts, labels, undecodable files, checksums",
        description=f"{prog} check DIR: counts a raw release's files and label rows, the posts a build keeps and "
        "skips (with reasons), the text files that are not UTF-8, and verifies SHA256SUMS where the release has it. "
        "Exit status 0 when the folder is usable, 1 when not.",
    )
    check.add_argument(
        "raw_dir",
        nargs="?",
        default=os.environ.get("MVSA_SINGLE_DIR"),
        help="raw release folder (default: $MVSA_SINGLE_DIR)",
    )
    check.add_argument("--variant", choices=list(ANNOTATORS), default="single")
    check.add_argument("--json", action="store_true", help="print the result as JSON")


def run_check(parser, args) -> int:
    if not args.raw_dir:
        parser.error("give the raw folder (or set MVSA_SINGLE_DIR)")
    try:
        result = check_mvsa(args.raw_dir, variant=args.variant)
    except MvsaFormatError as error:
        parser.exit(1, f"{parser.prog} check: error: {error}\n")
    print(json.dumps(result, indent=2) if args.json else check_summary(result))
    return 0 if result["usable"] else 1


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mmsa.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a dataset from a raw release")
    build.add_argument(
        "--raw_dir", default=os.environ.get("MVSA_SINGLE_DIR"), help="raw release folder (default: $MVSA_SINGLE_DIR)"
    )
    build.add_argument("--output_dir", required=True, help="where to save_to_disk the DatasetDict")
    build.add_argument("--variant", choices=list(ANNOTATORS), default="single")
    build.add_argument("--seed", type=int, default=42)
    build.add_argument("--split_file", default=None, help="JSON ids per split to reuse")
    build.add_argument("--strict", action="store_true", help="fail on the first unusable post")
    build.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    build.add_argument("--num_proc", type=int, default=None)
    build.add_argument("--push_to_hub", metavar="REPO", default=None, help="also upload to this Hub dataset repo")
    build.add_argument("--private", action="store_true")
    push = commands.add_parser("push", help="upload a saved dataset folder to the Hub")
    push.add_argument("--dataset_dir", required=True)
    push.add_argument("--repo_id", required=True)
    push.add_argument("--private", action="store_true")
    add_check_command(commands, prog="python -m mmsa.data")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "check":
        return run_check(parser, args)
    if args.command == "build":
        if not args.raw_dir:
            parser.error("--raw_dir is required when MVSA_SINGLE_DIR is not set")
        output_dir = Path(args.output_dir)
        if output_dir.is_dir() and any(output_dir.iterdir()) and not args.overwrite:
            parser.error(f"--output_dir {output_dir} is not empty: choose an empty folder, or pass --overwrite")
        try:
            dataset, report = build_mvsa(
                args.raw_dir,
                variant=args.variant,
                seed=args.seed,
                strict=args.strict,
                split_file=args.split_file,
                num_proc=args.num_proc,
                return_report=True,
            )
            save_mvsa(dataset, report, output_dir, overwrite=args.overwrite)
        except (MvsaFormatError, FileExistsError) as error:
            parser.exit(1, f"python -m mmsa.data build: error: {error}\n")
        print(report.summary())
        print(f"saved to {args.output_dir} (report: {Path(args.output_dir) / REPORT_FILE})")
        if args.push_to_hub:
            print(push_mvsa(dataset, report, args.push_to_hub, private=args.private))
    else:
        dataset = load_from_disk(args.dataset_dir)
        report = json.loads((Path(args.dataset_dir) / REPORT_FILE).read_text())
        print(push_mvsa(dataset, report, args.repo_id, private=args.private))


if __name__ == "__main__":
    raise SystemExit(main())
