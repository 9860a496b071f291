"""Execute notebooks in place and save their outputs, the way `nbdev_test` runs them.

Each notebook runs in a fresh execnb shell with nbs/ as working directory; cells flagged with a
`tst_flags` flag (`#| slow`) or `#| eval: false` are skipped and keep their saved outputs (pass
`--flags slow` to run slow cells too). A cell that raises stops the run: the notebook is not
written and the traceback is printed. Afterwards `nbdev_clean` normalises the file.

Usage: python tools/run_nb.py nbs/03_paste.ipynb [more.ipynb ...] [--flags slow] [--timeout 600]
"""
from __future__ import annotations
import argparse, os, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_docs import execute  # noqa: E402


def run(path: Path, skip: set[str], timeout: int | None) -> bool:
    "Execute `path` in place, skipping cells flagged with a flag in `skip`; True if every cell ran."
    import nbformat
    path = path.resolve()
    nb = nbformat.read(path, as_version=4)
    t0, cwd = time.time(), os.getcwd()
    os.chdir(path.parent)  # as nbdev_test runs it
    try: _, error = execute(nb, path, skip, timeout)
    finally: os.chdir(cwd)
    if error is not None:
        print(f'FAIL {path} cell {error["cell"]}:\n{error["source"]}\n{error["traceback"]}', file=sys.stderr)
        return False
    nbformat.write(nb, path)
    subprocess.run([str(Path(sys.executable).parent / 'nbdev_clean'), '--fname', str(path)], check=True)
    print(f'ok   {path} ({time.time() - t0:.0f} s)')
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('notebooks', nargs='+', type=Path)
    ap.add_argument('--flags', nargs='*', default=[], help='tst_flags to run as well, e.g. slow')
    ap.add_argument('--timeout', type=int, default=None, help='seconds per cell')
    a = ap.parse_args(argv)
    from nbdev.config import get_config
    skip = set(get_config().get('tst_flags', '').split()) - set(a.flags)  # as nbdev_test: flagged cells run only when asked for
    ok = [run(p, skip, a.timeout) for p in a.notebooks]
    return 0 if all(ok) else 1


if __name__ == '__main__':
    sys.exit(main())
