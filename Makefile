# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo-workspace

.PHONY: venv demo test lint docs bench clean

$(BIN)/cytoprofile: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# anndata (reading .h5ad back) declares pandas<3 but works with it: installed beside, not resolved
	$(BIN)/pip install --quiet --no-deps 'anndata>=0.12' scverse-misc session-info2
	$(BIN)/pip install --quiet array-api-compat legacy-api-wrap natsort zarr
	touch $@

venv: $(BIN)/cytoprofile

## The main job on a generated example workspace: synth → collate → recipe → QC.
demo: venv
	rm -rf $(DEMO)
	$(BIN)/cytoprofile synth $(DEMO) --plate PLATE1,PLATE2 --wells 96 --sites 3 --cells 30 --features 40 --faults
	$(BIN)/cytoprofile collate $(DEMO) BATCH1 PLATE1 PLATE2 --backend sqlite --backend parquet --jobs 2
	$(BIN)/cytoprofile config-template --workspace . --batch BATCH1 --plate PLATE1,PLATE2 -o $(DEMO)/config.yml
	$(BIN)/cytoprofile run $(DEMO)/config.yml
	@echo "Profiles: $(DEMO)/profiles/BATCH1; QC report: $(DEMO)/quality_control/report/BATCH1.html"

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src/cytoprofile

test: lint
	$(BIN)/pytest -n 2 --dist loadgroup -q

## The documentation site in site/: warnings are errors, internal links checked, no network.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: venv
	$(BIN)/python bench/collate.py
	$(BIN)/python bench/recipe.py

clean:
	rm -rf $(VENV) $(DEMO) bench/work site
