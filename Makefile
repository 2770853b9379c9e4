# dinolab: every command a learner, an instructor or CI needs, run inside .venv/.
# `make install` builds the environment from nothing and is safe to run again;
# `make test` is what CI runs after it (.ci/run). README.md shows each target as a plain
# `python -m ...` command too, for machines without make.
#   make install VENV=          the active interpreter instead (a conda environment): no .venv/
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu    CPU-only torch, no CUDA libs

PYTHON ?= python3.11
VENV   := .venv
ifeq ($(strip $(VENV)),)
PY     := python
VENV_PY :=
else
PY     := $(VENV)/bin/python
VENV_PY := $(PY)
# Every target runs tools from the virtual environment first.
export PATH := $(abspath $(VENV))/bin:$(PATH)
endif
PIP    := $(PY) -m pip
# The exact torch and torchvision that CI tests (pyproject.toml only sets lower bounds).
CONSTRAINTS := -c constraints.txt
TORCH_INDEX ?=
CHROMIUM ?=
export MPLBACKEND ?= Agg

.PHONY: help install test lint pytest bench experiments clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

ifneq ($(VENV_PY),)
$(VENV_PY):
	$(PYTHON) -m venv $(VENV)
endif

install: $(VENV_PY)  ## create .venv/ and install dinolab with the course and test tools (idempotent)
	$(if $(VENV_PY),$(PIP) install --quiet --upgrade pip)
	$(if $(TORCH_INDEX),$(PIP) install --quiet $(CONSTRAINTS) torch torchvision --index-url $(TORCH_INDEX))
	$(PIP) install --quiet $(CONSTRAINTS) -e ".[course,dev]"
	@# A kernel that points at this environment's python, so notebooks import this dinolab.
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (dinolab)" >/dev/null
	$(PY) -c "import torch, torchvision, dinolab; print('dinolab', dinolab.__version__, '| torch', torch.__version__, '| torchvision', torchvision.__version__)"
	@# Chromium for the real-browser tests (tests/course/test_browser.py): Debian's package where
	@# apt-get runs as root; elsewhere the tests skip and say so. CHROMIUM=no skips this step.
	@if [ "$(CHROMIUM)" = no ] || command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's chromium for the browser tests ..."; \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	    || echo "make install: apt-get could not install chromium: the browser tests will skip"; \
	else echo "make install: no chromium (the browser tests will skip): install it with your" \
	  "package manager (Debian/Ubuntu: sudo apt-get install chromium)"; fi

lint:  ## ruff over the whole repository
	$(PY) -m ruff check .

pytest:  ## the test suite only
	$(PY) -m pytest

test: lint pytest  ## ruff, then the whole test suite (what CI runs)

.PHONY: lab course book workspace
# Rooted at the repository, so course/, exercises/ and your work/ are all reachable; it opens
# on the welcome lesson.
LAB_ARGS := --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/course/00_welcome.ipynb
lab: $(VENV_PY)  ## JupyterLab on the repository, open on lesson 0 (kernel "Python 3 (dinolab)")
	env -u MPLBACKEND $(PY) -m jupyter lab $(LAB_ARGS)

course: $(VENV_PY)  ## run every lesson headless into build/course/ (notebooks + figures), a line per lesson
	$(PY) -m dinolab.course_runner --course-dir course --out build/course

book: $(VENV_PY)  ## the course website in build/book/ (offline HTML; runs lessons build/course lacks)
	$(PY) -m dinolab.book --course-dir course --executed build/course --out build/book

# Learners work in work/ (ignored by git), so `git pull` never touches their answers.
WORKSPACE_COPY := import pathlib, shutil; [shutil.copy2(p, q) for p in sorted(pathlib.Path('exercises').rglob('*')) if p.is_file() and not {'.ipynb_checkpoints', '__pycache__'} & set(p.parts) and not (q := pathlib.Path('work', p.relative_to('exercises'))).exists() and not q.parent.mkdir(parents=True, exist_ok=True)]; print('your exercises are in work/ (files already there were kept)')
workspace: $(VENV_PY)  ## copy exercises/ to work/ for your answers; never overwrites a file there
	$(PY) -c "$(WORKSPACE_COPY)"

bench: $(VENV_PY)  ## benchmarks against plain loops, lightly and kornia, each beside a limit measured in the same run (installs the bench extra: lightly, kornia); writes benchmarks/RESULTS.md
	$(PIP) install --quiet $(CONSTRAINTS) -e ".[bench]"
	$(PY) benchmarks/run.py

experiments: $(VENV_PY)  ## KD report, DINO vs baselines, collapse study, the course teacher, DINO on held-out seeds vs labels (~3 h on 2 cores); writes benchmarks/EXPERIMENTS.md
	$(PY) experiments/run.py

clean:  ## remove caches and build outputs (keeps .venv/)
	rm -rf build .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +

# --- exercises: learners grade themselves; instructors run nbgrader ----------------------------
.PHONY: grade release check-release collect autograde feedback export
EXERCISE ?= exercises
grade:  ## grade your exercises: points and feedback (EXERCISE=work/04_1_centering for one)
	$(PY) -m dinolab.grading $(EXERCISE)

release:  ## instructor: regenerate exercises/ from solutions/ (nbgrader); OVERWRITES exercises/
	$(PY) -m dinolab.grading.nbgrader_flow release $(ASSIGNMENT)

check-release:  ## instructor: fail if exercises/ is not what solutions/ generates
	$(PY) -m dinolab.grading.nbgrader_flow check-release

collect:  ## instructor: SUBMISSIONS=dir/<student>/<assignment>/*.ipynb -> instructor/submitted/
	$(PY) -m dinolab.grading.nbgrader_flow collect $(SUBMISSIONS) $(if $(ASSIGNMENT),--assignment $(ASSIGNMENT))

autograde:  ## instructor: nbgrader autograde, hidden tests included
	$(PY) -m dinolab.grading.nbgrader_flow autograde $(ASSIGNMENT)

feedback:  ## instructor: HTML feedback in instructor/feedback/
	$(PY) -m dinolab.grading.nbgrader_flow feedback $(ASSIGNMENT)

export:  ## instructor: grades to instructor/grades.csv
	$(PY) -m dinolab.grading.nbgrader_flow export
