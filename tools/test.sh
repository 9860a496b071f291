#!/usr/bin/env bash
# Every test: set up .venv with dev extras, check the notebooks and the package agree,
# check README.md is fresh, run every notebook (slow cells skipped), pytest, build the docs
# site and check every page of it in headless Chromium, then use notebook 03's explorer in JupyterLab
# in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/venv.sh dev
export PATH="$PWD/.venv/bin:$PATH" MPLBACKEND=Agg PYTHONHASHSEED=0

snapshot() { git ls-files -co --exclude-standard | LC_ALL=C sort | xargs -d '\n' sha1sum 2>/dev/null; }

echo "== 1/6 nbdev_export changes nothing"
before=$(snapshot)
nbdev_export
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "FAIL: nbdev_export changed files; the package and the notebooks disagree:"
  diff <(echo "$before") <(echo "$after") | grep '^[<>]' | sed 's/^/  /'
  echo "Run nbdev_export and commit the result."
  exit 1
fi

echo "== 2/6 README.md is generated from nbs/index.ipynb"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python tools/make_readme.py "$tmp" >/dev/null
if ! diff -q "$tmp/README.md" README.md >/dev/null; then
  echo "FAIL: README.md is stale; run: .venv/bin/python tools/make_readme.py"; diff "$tmp/README.md" README.md | head -20; exit 1
fi
if [ -d "$tmp/README_files" ] && ! diff -rq "$tmp/README_files" README_files >/dev/null; then
  echo "FAIL: README_files/ is stale; run: .venv/bin/python tools/make_readme.py"; exit 1
fi

echo "== 3/6 nbdev_test (every notebook, slow cells skipped; NBDEV_FLAGS=slow runs them too)"
# two notebooks at a time on two cores: one torch thread each, or they fight for the cores
OMP_NUM_THREADS=1 nbdev_test --n_workers 2 --timing ${NBDEV_FLAGS:+--flags "$NBDEV_FLAGS"}

echo "== 4/6 pytest tests/"
set +e
python -m pytest tests/ -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "FAIL: pytest collected no tests"; exit 1; fi
if [ $rc -ne 0 ]; then exit $rc; fi

echo "== 5/6 docs: render _docs/ from the notebooks, then load every page in headless Chromium"
# Step 3 already executed every notebook, so the site is rendered from their saved outputs here
# (`make docs` executes them again). Installs Debian's chromium when /usr/bin/chromium is missing;
# screenshots go to test-artifacts/docs/.
python tools/build_docs.py --no-exec
python tools/check_docs.py

echo "== 6/6 explorer: notebook 03's widget explorer in JupyterLab, in headless Chromium"
# JupyterLab from .venv on a free 127.0.0.1 port with a token and throwaway Jupyter folders; runs
# tools/explorer_check.ipynb, types a seed, drags a speed, checks the figure and the widget's plan.
# Screenshots go to test-artifacts/explorer/ (`--without-widgets` shows it failing).
python tools/check_explorer.py
