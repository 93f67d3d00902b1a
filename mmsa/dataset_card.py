"""The dataset card of an MVSA build, generated from the build itself (counts, splits, report)."""

from huggingface_hub import DatasetCard, DatasetCardData


CITATION = """@inproceedings{niu2016sentiment,
  title     = {Sentiment Analysis on Multi-View Social Data},
  author    = {Niu, Teng and Zhu, Shiai and Pang, Lei and El Saddik, Abdulmotaleb},
  booktitle = {MultiMedia Modeling (MMM 2016)},
  series    = {Lecture Notes in Computer Science},
  volume    = {9517},
  pages     = {15--27},
  year      = {2016},
  publisher = {Springer}
}"""

TEMPLATE = """---
{{ card_data }}
---

# MVSA-{{ variant_title }}

Image + text tweets labelled with sentiment (`negative`, `neutral`, `positive`), from the MVSA collection of
Niu et al. (MMM 2016), converted from the raw release with `python -m mmsa.data build`.

**License: research use only.** The posts and images are Twitter content redistributed by the MVSA authors for
research; check the original terms before any other use.

## Fields

| field | type | meaning |
|---|---|---|
| `id` | string | the post id of the raw release (`data/<id>.txt`, `data/<id>.jpg`) |
| `text` | string | the tweet text as written (hashtags, mentions and URLs kept; surrounding whitespace stripped) |
| `image` | image | the original JPEG bytes, not re-encoded |
| `label` | class | the post's sentiment after cleaning (below) |
| `text_label` | class | the text annotation{{ " (majority of three annotators)" if variant == "multiple" else "" }} |
| `image_label` | class | the image annotation{{ " (majority of three annotators)" if variant == "multiple" else "" }} |

## Splits and classes

| split | posts | negative | neutral | positive |
|---|---|---|---|---|
{% for name, count in split_counts.items() -%}
| {{ name }} | {{ count }} | {{ class_counts[name].get("negative", 0) }} | {{ class_counts[name].get("neutral", 0) }} | {{ class_counts[name].get("positive", 0) }} |
{% endfor %}
{% if split_file %}Splits taken from `{{ split_file }}`.{% else %}A stratified 8:1:1 split drawn with seed {{ seed }} (NumPy `RandomState`, the same on every machine).{% endif %}

## How it was built

- Label cleaning (the rule of MultiSentiNet and later work): both labels agree -> that label; one of them is
  neutral -> the other one; positive vs negative -> the post is dropped.{% if variant == "multiple" %} Each modality
  first takes the label that at least two of the three annotators agree on; posts without such a majority are dropped.{% endif %}
- {{ label_rows }} label rows, {{ kept }} posts kept, {{ skipped_total }} skipped:
{% for reason, count in skipped.items() %}  - `{{ reason }}`: {{ count }}
{% endfor %}{% if not skipped %}  - none
{% endif %}- {{ unlabelled }} files in `data/` had no label row.
- Every image was fully decoded once at build time; undecodable, empty or missing files are skipped and listed in
  `build_report.json`.

### Text encoding

The raw text files are not all UTF-8: {{ encodings.get("gb18030", 0) }} of the kept posts are encoded in GB18030 (a
Chinese Windows code page) and {{ encodings.get("utf-8", 0) }} in UTF-8. Decoding the GB18030 files as Latin-1 or
cp1252 gives mojibake such as `¡­` for `…` and `¡°` for `“`; this build decodes UTF-8 first and GB18030 otherwise, so
the text holds the characters the authors wrote.

## Citation

```bibtex
{{ citation }}
```
"""


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"


def mvsa_dataset_card(dataset, report) -> DatasetCard:
    """Builds the card of a `DatasetDict` from `build_mvsa` and its report (a `BuildReport` or its dict)."""
    report = report if isinstance(report, dict) else report.to_dict()
    variant = report["variant"]
    split_counts = {name: len(split) for name, split in dataset.items()}
    card_data = DatasetCardData(
        language=["en"],
        license="other",
        license_name="research-only",
        license_details="Research use only, as distributed by the MVSA authors (Niu et al., MMM 2016).",
        pretty_name=f"MVSA-{variant.capitalize()}",
        task_categories=["text-classification", "image-classification"],
        task_ids=["sentiment-classification"],
        size_categories=[_size_category(sum(split_counts.values()))],
        tags=["multimodal", "sentiment-analysis", "twitter", "image-text"],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"data/{name}-*.parquet"} for name in split_counts],
            }
        ],
        dataset_info={
            "features": dataset[next(iter(dataset))].features._to_yaml_list(),
            "splits": [{"name": name, "num_examples": count} for name, count in split_counts.items()],
        },
    )
    return DatasetCard.from_template(
        card_data,
        template_str=TEMPLATE,
        variant=variant,
        variant_title=variant.capitalize(),
        split_counts=split_counts,
        class_counts=report["class_counts"],
        seed=report["seed"],
        split_file=report["split_file"],
        label_rows=report["label_rows"],
        kept=report["kept"],
        skipped_total=report["skipped_total"],
        skipped=report["skipped"],
        unlabelled=len(report["unlabelled_files"]),
        encodings=report["text_encodings"],
        citation=CITATION,
    )
