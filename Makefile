# Developer shortcuts. `make style` rewrites, `make quality` only checks (as CI does), `make test` runs the suite,
# `make docs` regenerates the generated parts of the documentation and builds the site.
.PHONY: quality style test docs

check_dirs := mmsa tests bench scripts train_hf.py push_to_hub.py app.py

quality:
	ruff check $(check_dirs)
	ruff format --check $(check_dirs)
	python bench/results_tables.py --check
	python scripts/render_docs.py --check
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet

style:
	ruff check $(check_dirs) --fix
	ruff format $(check_dirs)

test:
	MVSA_SINGLE_DIR=$${MVSA_SINGLE_DIR:-../shared/data/MVSA_Single} python -m pytest tests -q

docs:
	python scripts/render_docs.py
	python bench/results_tables.py
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict
