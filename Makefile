# Developer shortcuts. `make style` rewrites, `make quality` only checks (as CI does), `make test` runs the suite.
.PHONY: quality style test

check_dirs := mmsa tests bench train_hf.py push_to_hub.py

quality:
	ruff check $(check_dirs)
	ruff format --check $(check_dirs)
	python bench/results_tables.py --check

style:
	ruff check $(check_dirs) --fix
	ruff format $(check_dirs)

test:
	MVSA_SINGLE_DIR=$${MVSA_SINGLE_DIR:-../shared/data/MVSA_Single} python -m pytest tests -q
