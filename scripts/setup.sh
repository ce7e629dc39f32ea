#!/usr/bin/env bash
# One set-up for every machine: developer box, CI, and the Docker image (same script, no drift).
#   scripts/setup.sh [EXTRAS]      EXTRAS: dev (default) | train | serve
# Creates .venv (or uses $K2D_VENV; K2D_VENV=system installs into the current interpreter),
# installs system packages it needs when run as root, and installs torch==2.13.0 (CPU wheel)
# first on machines without CUDA so nothing pulls gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="${1:-dev}"
VENV="${K2D_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "setup: please install: ${missing[*]} (apt-get install ${missing[*]})" >&2; return 0
  fi
  echo "setup: apt-get install ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The synthetic code-switching corpus's offline voices: gcin-voice (human Mandarin syllable recordings),
# espeak-ng and flite (Mandarin/English and English synthesisers; k2d_train/data/voices.py); its real text's
# Debian sources: fortunes-zh (Mandarin quotes and poems) and fortunes (English; k2d_train/data/text_sources.py).
if [ "$EXTRAS" != serve ] && command -v dpkg >/dev/null; then apt_install gcin-voice espeak-ng flite fortunes-zh fortunes; fi
# The race page's browser test (tests/test_ui_browser.py, marker browser): Debian's headless Chromium and its
# WebDriver, driven by selenium (the dev extra); no browser download of its own.
if [ "$EXTRAS" = dev ] && command -v dpkg >/dev/null; then apt_install chromium chromium-driver; fi

if [ "$VENV" = system ]; then
  PY="$PYTHON"
else
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  PY="$VENV/bin/python"
fi

STAMP="$VENV/.k2d-installed-$EXTRAS"
[ "$VENV" = system ] && STAMP="/tmp/.k2d-installed-$EXTRAS"
SATISFIED=("$STAMP")
[ "$EXTRAS" = train ] && SATISFIED+=("${STAMP%train}dev")  # dev includes train
for have in "${SATISFIED[@]}"; do
  if [ -f "$have" ] && [ "$have" -nt pyproject.toml ]; then
    echo "setup: $EXTRAS dependencies already installed"
    exit 0
  fi
done

PIP=("$PY" -m pip install -q --disable-pip-version-check)
if [ "$EXTRAS" != serve ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  # Pinned first so nothing later resolves a newer torch. Where a local CPU wheel is on pip's path
  # (find-links) pip takes it; K2D_TORCH_INDEX_URL picks another wheel index (e.g. PyTorch's CPU-only
  # one for a slim CPU image); otherwise the package index's default build (CUDA on Linux x86_64),
  # which is what the GPU training image wants (no nvidia-smi exists while an image builds).
  "${PIP[@]}" "torch==2.13.0" ${K2D_TORCH_INDEX_URL:+--index-url "$K2D_TORCH_INDEX_URL"}
fi
"${PIP[@]}" -e ".[$EXTRAS]"
# Kokoro's Mandarin speaker packs come from the npm registry (kokoro-js), not PyPI: fetched once, checked
if [ "$EXTRAS" != serve ]; then "$PY" -m k2d_train.data.kokoro fetch; fi
# promtool (Debian's prometheus package, the binary alone) checks the shipped alert rules in the tests
if [ "$EXTRAS" = dev ] && [ "$VENV" != system ] && [ ! -x "$VENV/bin/promtool" ] && command -v apt-get >/dev/null; then
  scratch=$(mktemp -d)
  (cd "$scratch" && apt-get download -qq prometheus >/dev/null 2>&1 && dpkg-deb -x prometheus_*.deb x \
    && cp x/usr/bin/promtool "$OLDPWD/$VENV/bin/") || echo "setup: promtool not installed (alert-rule test skips)" >&2
  rm -rf "$scratch"
fi
touch "$STAMP"
echo "setup: installed k2d[$EXTRAS] into $VENV"
