# Quick start:  make run   (all notebooks, full profile)   |   make test   (the tests)
# Each target creates .venv/ on first use from requirements.txt (+ the helpers package).
# Configuration comes from the environment: CXR_DATA_DIR, KERAS_HOME, CXR_ARTIFACTS_DIR.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Tests write their smoke-profile artifacts here, never into your artifacts/ folder.
TEST_ARTIFACTS ?= $(CURDIR)/artifacts-test

CHROMIUM ?= /usr/bin/chromium
ORTHANC ?= /usr/sbin/Orthanc
# Two pytest-xdist workers, whole test files each: tests/test_notebooks.py (the smoke notebook
# chain) runs on one while the other takes the rest. PYTEST_WORKERS= runs everything in one process.
PYTEST_WORKERS ?= -n 2 --dist loadfile

.PHONY: help venv run smoke test test-fast benchmark reliability report quality lab app phone browser orthanc clean-test \
	book book-html

help:
	@echo "make run        run notebooks 01-09 end to end (full profile) -> \$${CXR_ARTIFACTS_DIR:-artifacts/}"
	@echo "make test       unit + integration tests and the notebooks in the smoke profile"
	@echo "make test-fast  unit + integration tests only (no notebooks)"
	@echo "make smoke      run the notebooks in the smoke profile (a few minutes)"
	@echo "make quality    print the test-set quality bar of the trained model"
	@echo "make benchmark  TFLite size / latency / memory, the web app's end-to-end latency, the archive screener's films/s"
	@echo "make lab        open JupyterLab"
	@echo "make app        start the screening web app (Streamlit) on the phone model"
	@echo "make phone      build the phone web app (phone/dist/, needs Node to build) and serve it on localhost"
	@echo "make reliability  damaged inputs and 16-bit films through the app's pipeline -> reliability.json"
	@echo "make report     rewrite the README's generated blocks from the results files"
	@echo "make book       the course as a static HTML book (book/_build/html): refresh book/notebooks/ from the"
	@echo "                last full run's executed notebooks (when there are any), then build"
	@echo "make book-html  build the HTML book from the committed book/notebooks/ only (CI, publishing)"

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -e .
	touch $@

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m helpers.notebooks --profile full
	$(BIN)/python -m helpers.report

smoke: $(STAMP)
	$(BIN)/python -m helpers.notebooks --profile smoke

# The real-browser tests drive Debian's chromium; installed here when missing and root.
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing chromium and chromium-driver (Debian) for the browser tests"; \
		apt-get install -y -q chromium chromium-driver >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null); \
	else echo "No $(CHROMIUM) and not root: the browser tests will be skipped (apt-get install chromium chromium-driver)."; fi

# The archive screener's DICOMweb tests run a real PACS: Debian's Orthanc with its DICOMweb plugin,
# installed here when missing and root (the tests start their own server; the system service is not used).
orthanc:
	@if [ -x $(ORTHANC) ] && dpkg -s orthanc-dicomweb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing orthanc and orthanc-dicomweb (Debian) for the DICOMweb tests"; \
		apt-get install -y -q orthanc orthanc-dicomweb >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q orthanc orthanc-dicomweb >/dev/null); \
	else echo "No $(ORTHANC) and not root: the DICOMweb tests will be skipped (apt-get install orthanc orthanc-dicomweb)."; fi

test: $(STAMP) browser orthanc
	$(BIN)/ruff check .
	CXR_ARTIFACTS_DIR=$(TEST_ARTIFACTS) CXR_PROFILE=smoke \
		$(BIN)/python -m pytest tests $(PYTEST_WORKERS)

test-fast: $(STAMP) orthanc
	$(BIN)/ruff check .
	CXR_ARTIFACTS_DIR=$(TEST_ARTIFACTS) CXR_PROFILE=smoke \
		$(BIN)/python -m pytest tests -m "not notebooks" $(PYTEST_WORKERS)

quality: $(STAMP)
	$(BIN)/python benchmarks/quality_bar.py

benchmark: $(STAMP)
	$(BIN)/python benchmarks/tflite_benchmark.py
	$(BIN)/python benchmarks/app_latency.py
	$(BIN)/python benchmarks/phone_benchmark.py
	$(BIN)/python benchmarks/archive_benchmark.py

reliability: $(STAMP)
	$(BIN)/python benchmarks/reliability.py

report: $(STAMP)
	$(BIN)/python -m helpers.report

app: $(STAMP)
	$(BIN)/streamlit run app/streamlit_app.py

# The phone web app: export the models and the guard, npm ci, bundle into phone/dist/, serve it.
phone: $(STAMP)
	$(BIN)/python -m helpers.phone_site build
	$(BIN)/python -m helpers.phone_site serve

# The book: refresh the copies in book/notebooks/ from $${CXR_ARTIFACTS_DIR:-artifacts}/executed/ (refused,
# naming the notebook and the command to run, when a copy is stale, failed or not from a full run), then
# build book/_build/html with Sphinx, never executing a notebook. book-html builds from the committed
# copies only; BOOK_PYTHON=python uses an environment with just the book's pins (the Pages workflow).
BOOK_PYTHON ?= $(BIN)/python

book: $(STAMP)
	$(BIN)/python -m helpers.book

book-html: $(if $(filter $(BIN)/python,$(BOOK_PYTHON)),$(STAMP))
	$(BOOK_PYTHON) -m helpers.book --build

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean-test:
	rm -rf $(TEST_ARTIFACTS)
