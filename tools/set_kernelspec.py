"""Give notebooks the project's kernelspec, so that Jupyter opens them with the `python3` kernel and no
"Select Kernel" dialog asks which one.

The spec written is `{"name": "python3", "display_name": "python3", "language": "python"}`:
- `python3` is the kernel every Jupyter has: run from `.venv` (`.venv/bin/jupyter lab`), it is
  `.venv/share/jupyter/kernels/python3`, whose `argv[0]` "python" jupyter_client replaces by the
  server's own interpreter, `.venv/bin/python`, so `pal` imports.
- `nbdev_clean` (run by tools/run_nb.py and by nbdev's hooks) keeps the `kernelspec` key (nbdev 2.4.14,
  `nbdev.clean.clean_nb`, allows it without any `allowed_metadata_keys`) but sets its `display_name`
  to its `name`; writing that display name here means nbdev_clean leaves the file as it is. Jupyter
  chooses the kernel by `name` and shows the installed spec's own display name ("Python 3 (ipykernel)").

The file is written the way nbdev_clean writes notebooks (execnb's `write_nb`), and only when it
changes. Usage:
    python tools/set_kernelspec.py nbs/03_paste.ipynb [more.ipynb ...]   # set it
    python tools/set_kernelspec.py --check nbs/*.ipynb                   # exit 1 if a notebook lacks it
"""
from __future__ import annotations
import argparse, json, sys
from pathlib import Path

KERNELSPEC = {'display_name': 'python3', 'language': 'python', 'name': 'python3'}


def has_kernelspec(nb: dict) -> bool:
    "True if the notebook's metadata holds exactly `KERNELSPEC`."
    return nb.get('metadata', {}).get('kernelspec') == KERNELSPEC


def set_kernelspec(path: Path) -> bool:
    "Write `KERNELSPEC` into the metadata of the notebook at `path`; True if the file changed."
    from execnb.nbio import write_nb
    try: nb = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as e: raise SystemExit(f'set_kernelspec: {path}: not a readable notebook: {e}')
    if has_kernelspec(nb): return False
    nb.setdefault('metadata', {})['kernelspec'] = dict(KERNELSPEC)
    write_nb(nb, path)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('notebooks', nargs='+', type=Path)
    ap.add_argument('--check', action='store_true', help='change nothing; exit 1 if a notebook lacks the kernelspec')
    a = ap.parse_args(argv)
    if a.check:
        missing = [p for p in a.notebooks if not has_kernelspec(json.loads(p.read_text(encoding='utf-8')))]
        for p in missing: print(f'{p}: no kernelspec {KERNELSPEC["name"]!r}; run: python tools/set_kernelspec.py {p}')
        return 1 if missing else 0
    for p in a.notebooks: print(f'{p}: {"kernelspec set" if set_kernelspec(p) else "already set"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
