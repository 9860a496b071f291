"""Frame tables (issue 13): the one-time full decode that defines frame k and its time, and what reading it back costs.

`pal.video` decodes each file once, front to back and without converting pixels, and remembers the
frames' labels, keyframes and times on disk (`$PAL_CACHE_DIR`). Measured on the 60 s, 240x320 H.264
benchmark videos (benchmarks/common.py), one torch thread, interleaved repetitions:

- build: the full decode (`pal.video._build`) of one video;
- disk: reading its table back from the cache (`pal.video._load`), and opening a `VideoReader` in a
  fresh process state (memory cache empty, disk entry present);
- sparse reads of one PAL sample (`pal.paste.load_bank`, three readers at the 112-px training size)
  with this reader against the reader before issue 13 (a packet table, no full decode, no restart
  checks; loaded from git), and against decoding the three videos whole (row 1 of BENCHMARKS.md).

    python benchmarks/frame_table.py            # about a minute on a busy 2-core CPU
    python benchmarks/frame_table.py --quick
"""
from __future__ import annotations
import argparse, importlib.util, json, os, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from common import ROOT, CACHE, bench_videos, compare, machine, ms, paired, setup_torch  # noqa: E402

DECODE_HW = (128, 171)  # pal.train.TrainConfig(size=112).decode_hw
BEFORE = 'ecf11ca'  # the last commit whose pal/video.py read by a packet table (before issue 13)


def _reader_before():
    "`pal.video` as it was at commit BEFORE, imported from git as a separate module."
    path = CACHE / f'video_{BEFORE}.py'
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(subprocess.run(['git', 'show', f'{BEFORE}:pal/video.py'], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    spec = importlib.util.spec_from_file_location('video_before', path)
    mod = sys.modules['video_before'] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _plans(n_frames: int, k: int):
    from pal.sampling import sample_plan
    return [sample_plan(n_frames, (n_frames, n_frames), seed=s) for s in range(k)]


def table_build_and_load(paths, reps: int) -> dict:
    "One full decode without pixel conversion vs reading the table back from disk, per video."
    import pal.video as V
    p = paths[0]
    ident = V._identity(p)
    info, tab = V._build(p)
    V._save(ident, info, tab)
    def reopen(r):
        V._TABLES.clear()
        return V.VideoReader(p, size=DECODE_HW)
    res = compare({'build': lambda r: V._build(p), 'load': lambda r: V._load(ident), 'open': reopen}, reps)
    b, l, o = res['build'], res['load'], res['open']
    return dict(frames=info.num_frames, seconds=info.duration, entry_bytes=V._entry(ident).stat().st_size,
                build=b.median, build_cpu=b.cpu_median, load=l.median, load_cpu=l.cpu_median, open=o.median,
                build_over_load=paired(b, l), decode_fps=info.num_frames / b.median)


def sparse_before_after(paths, reps: int) -> dict:
    "The frames of one PAL sample from three 60 s videos: this reader, the reader before issue 13, and the videos decoded whole."
    import pal.video as V
    from pal.paste import load_bank
    old = _reader_before()
    new = [V.VideoReader(q, size=DECODE_HW) for q in paths[:3]]  # tables already built (cached)
    before = [old.VideoReader(q, size=DECODE_HW) for q in paths[:3]]
    plans = _plans(new[0].num_frames, reps + 1)
    needed = sum(len(load_bank(pl, new[0], new[1:]).frames) for pl in plans[:3]) / 3
    res = compare({'after': lambda r: load_bank(plans[r], new[0], new[1:]),
                   'before': lambda r: load_bank(plans[r], before[0], before[1:]),
                   'whole': lambda r: [v.get(torch.arange(v.num_frames)) for v in new]}, reps)
    a, b, w = res['after'], res['before'], res['whole']
    assert all(V.probe(q).seekable for q in paths[:3])  # no restart failed its check on these files
    return dict(needed=needed, after=a.median, after_cpu=a.cpu_median, before=b.median, before_cpu=b.cpu_median,
                whole=w.median, whole_cpu=w.cpu_median, after_over_before=paired(a, b), whole_over_after=paired(w, a),
                whole_over_after_cpu=paired(w, a, cpu=True))


def run(quick: bool = False, log=print) -> dict:
    setup_torch()
    paths = bench_videos('untrimmed', log=log)
    reps = 3 if quick else 7
    old = os.environ.get('PAL_CACHE_DIR')
    with tempfile.TemporaryDirectory() as d:
        os.environ['PAL_CACHE_DIR'] = d  # a cold cache of our own (restored below: run.py measures other parts after this one)
        out = dict(table=table_build_and_load(paths, reps))
        log(f"  table: build {ms(out['table']['build'])} ({out['table']['decode_fps']:.0f} frames/s), "
            f"load {ms(out['table']['load'])}, open a reader from disk {ms(out['table']['open'])}, entry {out['table']['entry_bytes']} bytes")
        out['sparse'] = sparse_before_after(paths, reps)
        s = out['sparse']
        log(f"  sparse: after {ms(s['after'])} vs before {ms(s['before'])} (x{s['after_over_before']:.2f}); "
            f"whole {ms(s['whole'])} = {s['whole_over_after']:.1f}x the sparse read")
    if old is None: os.environ.pop('PAL_CACHE_DIR', None)
    else: os.environ['PAL_CACHE_DIR'] = old
    return out


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true')
    args = ap.parse_args()
    t = time.perf_counter()
    res = dict(machine=machine(), **run(args.quick))
    res['seconds'] = time.perf_counter() - t
    print(json.dumps(res, indent=1, default=str))
