# Both targets create (or reuse) ./.venv themselves: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-workspace

SYSTEM_PACKAGES := prometheus tesseract-ocr chromium chromium-driver fonts-liberation2 fonts-freefont-ttf postgresql

.PHONY: demo test venv clean system-packages

venv: $(STAMP)

# Real Prometheus (scrape test), Tesseract (the OCR yardstick), headless Chromium (the web page's test),
# free font families for synthetic pages and PostgreSQL (the shared registry's tests) come from Debian;
# installed once.
system-packages:
	@command -v prometheus >/dev/null && command -v tesseract >/dev/null && command -v chromedriver >/dev/null && \
	  [ -d /usr/share/fonts/truetype/liberation2 ] && [ -d /usr/share/fonts/truetype/freefont ] && \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; }

# The CPU build of torch goes in first so the range in pyproject.toml is already met
# and pip never reaches for a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) system-packages
	$(PY) -m pytest -q -n 2

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR)
