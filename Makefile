# AlignKit — every entry point a developer or a user needs. `make help` lists them.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SITE := $(VENV)/lib/python3.11/site-packages
APT_PACKAGES := python3-qgis qgis qgis-providers xvfb xauth python3-venv python3-numpy python3-scipy \
                python3-pyproj python3-gdal python3-matplotlib zip
QGIS_PROCESS := tools/qgis_process.sh
OUT ?= out/result.gpkg
DEMO_DIR := out/demo

.PHONY: help setup test test-fast demo priors align align-stack bench bench-accuracy bench-scale lint package install screenshot clean

help:
	@echo "make setup                         install QGIS (apt), .venv and Python dependencies (idempotent)"
	@echo "make test                          run the whole test suite (core + QGIS, offscreen)"
	@echo "make demo                          generate a synthetic survey and align it through qgis_process"
	@echo "make priors IMAGES=dir OUT=f.gpkg [CRS=EPSG:n]   camera priors and predicted footprints"
	@echo "make align IMAGES=dir OUT=f.gpkg [CRS=EPSG:n] [FOCAL=px]   drone photo alignment"
	@echo "make align-stack INPUT=dir OUT=dir [REFERENCE=name] [MODEL=m] [FUSE=none|focus|exposure]   image stack registration"
	@echo "make bench                         benchmarks, figures as JSON under bench/"
	@echo "make bench-accuracy [BENCH_ANCHOR=1] [SEEDS240=1,2]   camera shape error on generated 18/240-photo blocks (vs COLMAP)"
	@echo "make bench-scale [SIZES=250,500,1000]   time and peak memory vs block size (generated surveys, cached in out/bench-scale)"
	@echo "make lint | package | install | screenshot"

# ---- set-up: each step leaves a stamp so a second run is quiet and quick ----
setup: $(VENV)/.deps-stamp

$(VENV)/.apt-stamp:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing from Debian: $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@touch $@

$(VENV)/.deps-stamp: $(VENV)/.apt-stamp requirements.txt requirements-dev.txt
	@echo "Installing Python dependencies into $(VENV)"
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 | grep -v "is ignored: it is neither" || true
	@$(PY) -c "import numpy, cv2, scipy, pyproj, exif, qgis.core; assert numpy.__version__ < '2'" \
	  || { echo "Python dependencies are broken, see above"; exit 1; }
	@mkdir -p $(VENV)/pkg && ln -sfn "$(CURDIR)" $(VENV)/pkg/alignkit
	@echo "$(CURDIR)/$(VENV)/pkg" > $(SITE)/alignkit-dev.pth
	@touch $@

# ---- tests ----
test: setup
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q tests

test-fast: setup
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -m "not slow" tests

# bandit at the level the QGIS plugin repository blocks (medium and high), on what the plugin zip ships.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m bandit -q -ll -r . -x ./tests,./tools,./.venv,./build,./dist,./.qgis-profile

# ---- jobs, run through qgis_process like a script would ----
demo: setup
	$(PY) -m alignkit.tools.demo --out $(DEMO_DIR)

priors: setup
	@[ -n "$(IMAGES)" ] || { echo "usage: make priors IMAGES=dir OUT=file.gpkg [CRS=EPSG:n]"; exit 2; }
	$(QGIS_PROCESS) run alignkit:photopriors -- IMAGES="$(IMAGES)" OUTPUT="$(OUT)" $(if $(CRS),TARGET_CRS="$(CRS)")

align: setup
	@[ -n "$(IMAGES)" ] || { echo "usage: make align IMAGES=dir OUT=file.gpkg [CRS=EPSG:n] [FOCAL=px] [GCP=file] [CHECK=a,b] [DEM=file] [EXECUTOR=tcp://host:port] [SUBMODEL=photos]"; exit 2; }
	$(QGIS_PROCESS) run alignkit:alignphotos -- IMAGES="$(IMAGES)" OUTPUT="$(OUT)" $(if $(CRS),TARGET_CRS="$(CRS)") $(if $(FOCAL),FOCAL_PX="$(FOCAL)") \
	  $(if $(GCP),GCP_FILE="$(GCP)") $(if $(CHECK),CHECK_POINTS="$(CHECK)") $(if $(DEM),REFERENCE_DEM="$(DEM)") \
	  $(if $(EXECUTOR),EXECUTOR="$(EXECUTOR)") $(if $(SUBMODEL),SUBMODEL_PHOTOS="$(SUBMODEL)")

align-stack: setup
	@[ -n "$(INPUT)" ] || { echo "usage: make align-stack INPUT=dir OUT=dir [REFERENCE=name] [MODEL=m] [FUSE=mode]"; exit 2; }
	$(QGIS_PROCESS) run alignkit:alignstack -- INPUT="$(INPUT)" OUTPUT_FOLDER="$(OUT)" \
	  $(if $(REFERENCE),REFERENCE="$(REFERENCE)") $(if $(MODEL),MODEL="$(MODEL)") $(if $(FUSE),FUSE="$(FUSE)")

bench: setup
	$(PY) -m alignkit.tools.bench --out bench

# Generated blocks with exact truth (cached in out/bench-accuracy/); BENCH_ANCHOR=1 also runs COLMAP
# (pycolmap 4.2, CPU) from its own venv, which need not coexist with QGIS's Python.
ANCHOR_VENV := .venv-anchor
SEEDS18 ?= 1,2,3
SEEDS240 ?= 1
BLOCKS ?= 18,240

$(ANCHOR_VENV)/.stamp:
	@[ -x $(ANCHOR_VENV)/bin/python ] || /usr/bin/python3 -m venv $(ANCHOR_VENV)
	$(ANCHOR_VENV)/bin/python -m pip install -q --disable-pip-version-check "pycolmap>=4.2,<4.3" "numpy<2"
	@touch $@

bench-accuracy: setup $(if $(filter 1,$(BENCH_ANCHOR)),$(ANCHOR_VENV)/.stamp)
	$(PY) -m alignkit.tools.bench_accuracy --out bench --blocks $(BLOCKS) --seeds18 $(SEEDS18) --seeds240 $(SEEDS240) \
	  $(if $(filter 1,$(BENCH_ANCHOR)),--anchor-python $(ANCHOR_VENV)/bin/python)
SIZES ?= 250,500,1000
bench-scale: setup
	$(PY) -m alignkit.tools.bench_scale --sizes $(SIZES) --out bench

screenshot: setup
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m alignkit.tools.screenshot --out docs

# ---- distribution ----
package:
	@rm -rf build/package dist && mkdir -p build/package/alignkit dist
	@# What is committed (git archive), not the working tree; minus what a plugin install does not need.
	@git archive HEAD | tar -x -C build/package/alignkit
	@cd build/package/alignkit && rm -rf tests docs tools/bench*.py tools/colmap_anchor.py .[!.]* Makefile requirements-dev.txt pyproject.toml
	@cd build/package && zip -q -r ../../dist/alignkit.zip alignkit
	@echo "dist/alignkit.zip"

install:
	@d="$${QGIS_PROFILE_DIR:-$$HOME/.local/share/QGIS/QGIS3/profiles/default}/python/plugins"; \
	mkdir -p "$$d" && ln -sfn "$(CURDIR)" "$$d/alignkit" && echo "linked $$d/alignkit -> $(CURDIR)"

clean:
	rm -rf build dist out .pytest_cache
