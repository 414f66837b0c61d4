#!/usr/bin/env bash
# The test command (README "Run the tests"; CI runs exactly this through .ci/run).
#
# Builds the test environments from nothing if they are missing (idempotent when they exist),
# then runs: ruff, the whole suite with transformers 4.30.2 (A1111's pin), and the encoder tests
# again with the newest transformers (with the SigLIP tests, which need transformers >= 4.37 and
# skip in the main venv). Arguments go to the main pytest run; with arguments the
# compatibility pass is skipped.
#
# CPU torch 2.13.0 is installed first and held by requirements/constraints.txt, so no dependency
# can replace it with a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
MAIN_VENV=${IPADAPTER_TEST_VENV:-.venv}
LATEST_VENV=${IPADAPTER_TEST_VENV_LATEST:-.venv-tf-latest}

setup_venv() {  # setup_venv DIR REQUIREMENTS
  local dir=$1 req=$2 stamp
  stamp="$dir/.ipadapter-$( (cat "$req" requirements/constraints.txt; cat "${req%.txt}.no-deps.txt" 2>/dev/null || true) | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ]; then return; fi
  echo "== setting up $dir from $req"
  [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" -c requirements/constraints.txt
  if [ -f "${req%.txt}.no-deps.txt" ]; then  # packages whose declared dependencies would replace our pins
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "${req%.txt}.no-deps.txt"
  fi
  "$dir/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') and not torch.version.cuda else 'a CUDA or wrong torch was installed: ' + torch.__version__)"
  rm -f "$dir"/.ipadapter-*
  touch "$stamp"
}

run_pytest() {  # exit code 5 means no test was collected: a broken selection, never a pass
  local rc=0
  "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests ($*)" >&2
    return 1
  fi
  return "$rc"
}

need_cxx() {  # insightface, the face-analysis test oracle, compiles a small C++ extension on install
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 && return
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing g++ (Debian) to build insightface, the face-analysis test oracle"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
  else
    echo "error: a C++ compiler is needed to build insightface (a test oracle): apt-get install g++" >&2
    exit 1
  fi
}

need_cxx
setup_venv "$MAIN_VENV" requirements/test.txt
echo "== ruff"
"$MAIN_VENV/bin/python" -m ruff check .
echo "== tests (transformers 4.30.2)"
run_pytest "$MAIN_VENV/bin/python" -m pytest -p no:cacheprovider "$@"

if [ "$#" -eq 0 ]; then
  setup_venv "$LATEST_VENV" requirements/test-latest-transformers.txt
  echo "== encoder, SigLIP and schema tests (newest transformers, pydantic 2: $("$LATEST_VENV/bin/python" -c 'import transformers; print(transformers.__version__)'))"
  run_pytest "$LATEST_VENV/bin/python" -m pytest -p no:cacheprovider -q tests/test_encoder.py tests/test_caches.py \
    tests/test_boundaries.py tests/test_schema.py tests/test_siglip.py tests/test_forge_flux_siglip.py
fi
