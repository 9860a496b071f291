"""4. Extraction: `pal-extract` throughput (clips per second, decoding included) vs the bare backbone
forward on the same number of clips of the same shape, and vs decoding alone.

`pal.features.extract` is run as the command runs it (one untrimmed 60 s video, window 32 clips,
one window per forward, the checkpoint's frame_stride 2), from a checkpoint written with the training
config of each size. Since change E, `extract_features` decodes and preprocesses the next windows in
a background thread while the encoder runs, so the best it can do is the slower of its two halves:

- bare forward: `encoder(x)` under `torch.no_grad()` on random tensors `[batch, 3, 32 * clip_len, size, size]`,
  as many clips as the video has rows, with no context overlap, no decoding and no preprocessing;
- decode alone (the ceiling of the decoding half): `extract_features` with `NoEncoder` in place of the
  encoder, so `reader.get` + `preprocess` of every window of the same plan, without the thread.

"folder" rows run `pal-extract` on a folder of three 60 s videos, the way a dataset is extracted (the
per-run checkpoint loading and receptive-field probe are paid once; with `jobs=2`, the default on the CPU, two
videos go through at once, so the next video's first window decodes while this one's last window runs). Two
references: the bare forward on one core (the encoder's share when decoding has cores of its own, as on a
GPU machine) and the bare forward on both cores (two forwards at once, each on one thread: what the
encoder alone could get from this machine).

"core" is `extract_features` alone on an open reader (no checkpoint loading, receptive-field probe or
file writing, which `pal-extract` does once per run or per video). The optimisations are timed as a chain:
"before" is the code before issue 7 (`baseline.before()`: old decoding and augmentation, no prefetch, a
full last window flush with the end); "no prefetch" has changes A-D (`extract_features(..., prefetch=False)`,
still the flush last window); "flush" adds change E (the prefetch thread); `pal-extract` as it is adds
change G (the short last window).
"""
from __future__ import annotations
import inspect, tempfile
from pathlib import Path

import numpy as np
import torch

from common import bench_videos, compare, paired
import baseline


def _checkpoint(folder: Path, size: int) -> Path:
    from pal.train import TrainConfig
    from pal.features import random_encoder, save_encoder
    cfg = TrainConfig(size=size)
    return save_encoder(folder / f'random{size}.pt', cfg, random_encoder(cfg), kind='random')


class NoEncoder(torch.nn.Module):
    "Stands in for the encoder in `extract_features`: the frames are decoded and preprocessed as usual, the forward costs nothing."
    def __init__(self, clip_len: int):
        super().__init__()
        self.clip_len, self.out_dim, self.p = clip_len, 1, torch.nn.Parameter(torch.zeros(()))  # p: the device to use
    def forward(self, x): return x.new_zeros(x.shape[0], 1, x.shape[2] // self.clip_len)  # [b, 1, clips]


def measure(size: int, reps: int) -> dict:
    from pal.features import extract, extract_features, load_model, window_plan
    from pal.video import VideoReader
    video = bench_videos('untrimmed')[0]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ck = _checkpoint(d, size)
        enc, cfg, _ = load_model(ck)
        man = extract(ck, video, d / 'warm', device='cpu', progress=False, log=None)  # also measures the receptive field once
        rows = next(iter(man['videos'].values()))['rows']
        window, margin, fs, L = man['window'], man['margin'], man['frame_stride'], enc.clip_len
        batch = inspect.signature(extract).parameters['batch'].default  # windows per forward, as pal-extract runs
        x = torch.randn(batch, 3, window * L, size, size)
        n_fwd = -(-rows // (window * batch))  # forwards of `batch` windows that cover `rows` clips
        @torch.no_grad()
        def bare(r):
            for _ in range(n_fwd): enc(x)
        def decode(r):  # what extract_features decodes and preprocesses, without the encoder
            with VideoReader(video, size=cfg.decode_hw) as reader:
                extract_features(NoEncoder(L), reader, cfg.augment, fs, window, margin, batch, prefetch=False)
        run = lambda r: extract(ck, video, d / f'out{r}', device='cpu', progress=False, log=None)
        def plain(r):
            with baseline.no_prefetch(), baseline.flush_last_window(): return run(r)
        def flush(r):
            with baseline.flush_last_window(): return run(r)
        def core(r):
            with VideoReader(video, size=cfg.decode_hw) as reader: extract_features(enc, reader, cfg.augment, fs, window, margin, batch)
        res = compare({'extract': run, 'noprefetch': plain, 'flush': flush, 'before': lambda r: baseline.run_before(run, r),
                       'core': core, 'decode': decode, 'bare': bare}, reps)
        ref = np.load(d / 'warm' / next(iter(man['videos'].values()))['features'])
        with VideoReader(video, size=cfg.decode_hw) as reader:
            same = bool(np.allclose(extract_features(enc, reader, cfg.augment, fs, window, margin, batch, prefetch=False), ref, atol=1e-5))
    e, b, np_, eb, dc = (res[k] for k in ('extract', 'bare', 'noprefetch', 'before', 'decode'))
    clips_bare = n_fwd * window * batch
    per_row = rows / clips_bare  # the bare forward's time for `rows` clips, as a fraction of its measured time
    # per round: the lower of the two ceilings is the slower half, max(decode time, forward time for `rows` clips)
    bound = [max(t_d, t_b * per_row) for t_d, t_b in zip(dc.wall, b.wall)]
    reach = float(np.median([t_bd / t_e for t_bd, t_e in zip(bound, e.wall)]))
    reach_core = float(np.median([t_bd / t_c for t_bd, t_c in zip(bound, res['core'].wall)]))
    return dict(size=size, rows=rows, window=window, margin=margin, windows=len(window_plan(rows, window, margin)),
                forwarded=_forwarded(rows, window, margin), extract=e.median, extract_cpu=e.cpu_median,
                bare=b.median, bare_cpu=b.cpu_median, clips_per_s=rows / e.median, bare_clips_per_s=clips_bare / b.median,
                ratio=paired(b, e) * per_row, ratio_cpu=paired(b, e, cpu=True) * per_row,
                decode=dc.median, decode_cpu=dc.cpu_median, decode_clips_per_s=rows / dc.median,
                decode_over_bare=paired(b, dc) * per_row,  # < 1: decoding is the slower half
                bound='decode' if dc.median > b.median * per_row else 'forward', reach=reach,  # the slower half / pal-extract
                core=res['core'].median, core_clips_per_s=rows / res['core'].median, reach_core=reach_core,
                overlap=float(np.median([(t_d + t_b * per_row) / t_e for t_d, t_b, t_e in zip(dc.wall, b.wall, e.wall)])),  # (decode + forward) / pal-extract
                noprefetch=np_.median, noprefetch_cpu=np_.cpu_median, noprefetch_ratio=paired(b, np_) * per_row,
                prefetch_speedup=paired(np_, res['flush']), same_features=same,
                flush=res['flush'].median, flush_cpu=res['flush'].cpu_median, short_last_speedup=paired(res['flush'], e),
                forwarded_flush=_forwarded(rows, window, margin, baseline.window_plan_before),
                before=eb.median, before_cpu=eb.cpu_median, ratio_before=paired(b, eb) * per_row, speedup=paired(eb, e),
                speedup_ad=paired(eb, np_))


def _forwarded(rows: int, window: int, margin: int, plan=None) -> int:
    "Clips `extract_features` runs through the encoder for a video of `rows` clips (`plan`: default `window_plan`): the kept ones plus the windows' margins."
    from pal.features import window_plan
    return sum(min(window, rows - a) for a, _, _ in (plan or window_plan)(rows, window, margin))


def measure_folder(size: int, reps: int, n_videos: int = 3) -> dict:
    from concurrent.futures import ThreadPoolExecutor
    from pal.features import extract, load_model, auto_jobs
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        folder = d / 'videos'; folder.mkdir()
        for v in bench_videos('untrimmed')[:n_videos]: (folder / v.name).symlink_to(v.resolve())
        ck = _checkpoint(d, size)
        enc, cfg, _ = load_model(ck)
        man = extract(ck, folder, d / 'warm', device='cpu', progress=False, log=None)
        rows = sum(v['rows'] for v in man['videos'].values())
        window, L = man['window'], enc.clip_len
        forwarded = sum(_forwarded(v['rows'], window, man['margin']) for v in man['videos'].values())
        x = torch.randn(1, 3, window * L, size, size)
        n_fwd = -(-rows // window)  # one-window forwards that cover `rows` clips
        per_row = rows / (n_fwd * window)
        @torch.no_grad()
        def fwd(n):
            for _ in range(n): enc(x)
        half = -(-n_fwd // 2)  # forwards per thread: both threads do the same number (2 * half >= n_fwd windows in all)
        pool = ThreadPoolExecutor(2)
        def bare2(r): list(pool.map(fwd, (half, half)))  # both cores: two forwards at once
        jobs = inspect.signature(extract).parameters['jobs'].default or auto_jobs(torch.device('cpu'))
        fns = {'jobs1': lambda r: extract(ck, folder, d / 'o1', device='cpu', progress=False, log=None, jobs=1),
               'default': lambda r: extract(ck, folder, d / 'o2', device='cpu', progress=False, log=None),
               'bare': lambda r: fwd(n_fwd), 'bare2': bare2}
        res = compare(fns, reps)
        pool.shutdown()
        same = all(np.array_equal(np.load(d / 'warm' / v['features']), np.load(d / o / v['features']))
                   for v in man['videos'].values() for o in ('o1', 'o2'))
    b, b2 = res['bare'], res['bare2']
    per_row2 = rows / (2 * half * window)  # the two-thread forward's time for `rows` clips, as a fraction of its measured time
    out = dict(size=size, videos=n_videos, rows=rows, forwarded=forwarded, jobs=jobs, same_features=same,
               bare_clips_per_s=rows / (b.median * per_row), bare2_clips_per_s=rows / (b2.median * per_row2))
    for k in ('jobs1', 'default'):
        e = res[k]
        out[k] = dict(time=e.median, cpu=e.cpu_median, clips_per_s=rows / e.median,
                      ratio=paired(b, e) * per_row, ratio2=paired(b2, e) * per_row2,  # vs one core, vs both cores
                      cpu_per_clip=e.cpu_median / rows)
    out['bare_cpu_per_clip'] = b.cpu_median * per_row / rows
    return out


def run(quick: bool = False, log=print) -> dict:
    out = {}
    for size in ((32,) if quick else (32, 112)):
        out[size] = measure(size, 2 if quick else 3)
        log(f'  extraction {size}px: {out[size]}')
    for size in ((32,) if quick else (32, 112)):
        out[f'folder{size}'] = measure_folder(size, 2 if quick else 5)
        log(f'  extraction folder {size}px: {out[f"folder{size}"]}')
    return out
