# sparsify: `make demo` and `make test` each work as the only command on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench samples clean fuzz

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,plot]'
	touch $(STAMP)

# Compress a sample model losslessly, inspect it, decompress it and compare bytes with the original;
# then a lossy run with an error gate, one with a size target (and its rate-distortion plot), and a whole
# model folder (weights, licence, README) compressed with two workers, verified and rebuilt.
demo: install
	@rm -rf demo-out && mkdir -p demo-out
	$(VENV)/bin/sparsify compress sample_models/digits_mlp.safetensors -o demo-out/digits_mlp.sparsify
	$(VENV)/bin/sparsify inspect demo-out/digits_mlp.sparsify
	$(VENV)/bin/sparsify decompress demo-out/digits_mlp.sparsify -o demo-out/digits_mlp.safetensors
	cmp demo-out/digits_mlp.safetensors sample_models/digits_mlp.safetensors && echo "demo: decompressed file is byte-identical to the original"
	$(VENV)/bin/sparsify compress sample_models/crepe-tiny/weights.h5 -o demo-out/crepe-tiny.sparsify \
		-p 'threshold:max_error=0.05+zstd' --max-error 0.05
	$(VENV)/bin/sparsify verify demo-out/crepe-tiny.sparsify --against sample_models/crepe-tiny/weights.h5 --max-error 0.05
	$(VENV)/bin/sparsify compress sample_models/crepe-tiny/weights.h5 -o demo-out/crepe-tiny-8x.sparsify --target-ratio 8 \
		--plot demo-out/crepe-tiny-8x.png
	$(VENV)/bin/sparsify compress sample_models/crepe-tiny -o demo-out/crepe-tiny-folder.sparsify --jobs 2 > /dev/null
	$(VENV)/bin/sparsify verify demo-out/crepe-tiny-folder.sparsify --against sample_models/crepe-tiny
	$(VENV)/bin/sparsify decompress demo-out/crepe-tiny-folder.sparsify -o demo-out/crepe-tiny-restored
	cmp demo-out/crepe-tiny-restored/LICENSE sample_models/crepe-tiny/LICENSE && cmp demo-out/crepe-tiny-restored/README.md \
		sample_models/crepe-tiny/README.md && echo "demo: the model folder came back with its other files byte-identical"

test: install
	$(VENV)/bin/ruff check sparsify tests bench sample_models
	$(PY) -m pytest -q

bench: install $(VENV)/.bench-installed
	$(PY) bench/run.py
	$(PY) bench/methods.py
	$(PY) bench/lossless.py
	$(PY) bench/lossy.py
	$(PY) bench/startup.py
	$(PY) bench/ratecontrol.py
	$(PY) bench/scale.py
	$(PY) bench/task.py
	$(PY) bench/methods_survey.py

# ZipNN (the lossless yardstick), --no-deps: its byte API needs no torch (bench/zipnn_check.py stands in
# for it where torch is missing); its sdist needs a C compiler. torch, the CPU build, comes with the bench
# extra for bench/antiberty.py (a real transformer checkpoint, converted in the benchmark).
$(VENV)/.bench-installed: pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench,plot,task]'
	$(PY) -m pip install --quiet --no-deps zipnn==0.5.4 \
		|| echo "bench: zipnn could not be installed (its sdist needs a C compiler); the ZipNN rows are left out"
	touch $@

# Structure-aware fuzzing of every input path (bench/fuzz.py): coverage-guided with atheris, 2 workers,
# FUZZ_MINUTES of wall time; writes bench/results/fuzz.md/.json and copies new reproducers to tests/fuzz_cases/.
FUZZ_MINUTES ?= 25
fuzz: install $(VENV)/.fuzz-installed
	$(PY) bench/fuzz.py --minutes $(FUZZ_MINUTES) --jobs 2 --keep-cases tests/fuzz_cases --keep-max-bytes 65536

$(VENV)/.fuzz-installed: pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,fuzz]'
	touch $@

samples: install
	$(PY) -m pip install --quiet -e '.[dev,samples]'
	$(PY) sample_models/make_samples.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .hypothesis
