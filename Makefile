# dinolab: every command a learner, an instructor or CI needs, run inside .venv/.
# `make install` builds the environment from nothing and is safe to run again;
# `make test` is what CI runs after it (.ci/run).

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Every target runs tools from the virtual environment first.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export MPLBACKEND ?= Agg

.PHONY: help install test lint pytest bench experiments clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)  ## create .venv/ and install dinolab with the course and test tools (idempotent)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[course,dev]"
	@# A kernel that points at this venv's python, so notebooks import this dinolab.
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (dinolab)" >/dev/null
	$(PY) -c "import torch, torchvision, dinolab; print('dinolab', dinolab.__version__, '| torch', torch.__version__, '| torchvision', torchvision.__version__)"

lint:  ## ruff over the whole repository
	$(VENV)/bin/ruff check .

pytest:  ## the test suite only
	$(PY) -m pytest

test: lint pytest  ## ruff, then the whole test suite (what CI runs)

.PHONY: lab course
lab: $(PY)  ## JupyterLab on course/ (kernel "Python 3 (dinolab)")
	env -u MPLBACKEND $(VENV)/bin/jupyter lab --ServerApp.root_dir=course

course: $(PY)  ## run every lesson headless into build/course/ (notebooks + figures), a line per lesson
	$(PY) -m dinolab.course_runner --course-dir course --out build/course

bench: $(PY)  ## ratio benchmarks (installs the optional lightly extra); writes benchmarks/RESULTS.md
	$(PIP) install --quiet -e ".[bench]"
	$(PY) benchmarks/run.py

experiments: $(PY)  ## KD report, DINO vs baselines, collapse study, the course teacher, DINO on held-out seeds vs labels (~3 h on 2 cores); writes benchmarks/EXPERIMENTS.md
	$(PY) experiments/run.py

clean:  ## remove caches and build outputs (keeps .venv/)
	rm -rf build .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +

# --- exercises: learners grade themselves; instructors run nbgrader ----------------------------
.PHONY: grade release check-release collect autograde feedback export
EXERCISE ?= exercises
grade:  ## grade your exercises: points and feedback (EXERCISE=exercises/04_1_centering for one)
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
