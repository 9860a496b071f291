"""4. Extraction: `pal-extract` throughput (clips per second, decoding included) vs the bare backbone
forward on the same number of clips of the same shape.

`pal.features.extract` is run as the command runs it (one untrimmed 60 s video, window 32 clips,
4 windows per forward, the checkpoint's frame_stride 2), from a checkpoint written with the training
config of each size; the bare forward is `encoder(x)` under `torch.no_grad()` on random tensors
`[4, 3, 32 * clip_len, size, size]`, as many clips as the video has rows, with no context overlap,
no decoding and no preprocessing.
"""
from __future__ import annotations
import json, tempfile, time
from concurrent.futures import ThreadPoolExecutor
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


@torch.no_grad()
def extract_features_prefetch(encoder, reader, aug, frame_stride: int, window: int, margin: int, batch: int = 4) -> np.ndarray:
    """`pal.features.extract_features` with one change, proposed for pal.features: the frames of the next
    forward are decoded and preprocessed in a background thread while the encoder runs (PyAV and torch
    release the GIL), so decoding hides behind the forward instead of adding to it."""
    from pal.features import ClipGrid, window_plan, preprocess
    grid = ClipGrid(reader.num_frames, reader.fps, encoder.clip_len, frame_stride)
    plan = window_plan(grid.rows, max(window, 2 * margin + 1), margin)
    n = min(max(window, 2 * margin + 1), grid.rows)
    chunks = [plan[i:i + batch] for i in range(0, len(plan), batch)]
    load = lambda chunk: preprocess(torch.stack([reader.get(grid.frame_indices(a, n)) for a, _, _ in chunk]), aug)
    out = np.empty((grid.rows, encoder.out_dim), np.float32)
    with ThreadPoolExecutor(1) as ex:
        nxt = ex.submit(load, chunks[0])
        for j, chunk in enumerate(chunks):
            x = nxt.result()
            if j + 1 < len(chunks): nxt = ex.submit(load, chunks[j + 1])
            f = encoder(x).float()  # [b, C, n]
            for (a, lo, hi), fi in zip(chunk, f): out[lo:hi] = fi[:, lo - a:hi - a].T.numpy()
    return out


def measure(size: int, reps: int, n_videos: int = 1) -> dict:
    from pal.features import extract, load_model
    video = bench_videos('untrimmed')[0]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ck = _checkpoint(d, size)
        enc, cfg, _ = load_model(ck)
        man = extract(ck, video, d / 'warm', device='cpu', progress=False, log=None)  # also measures the receptive field once
        rows = next(iter(man['videos'].values()))['rows']
        window, batch, L = man['window'], 4, enc.clip_len
        x = torch.randn(batch, 3, window * L, size, size)
        n_fwd = -(-rows // (window * batch))  # forwards of `batch` windows that cover `rows` clips
        @torch.no_grad()
        def bare(r):
            for _ in range(n_fwd): enc(x)
        from pal.video import VideoReader
        def prefetch(r):
            with VideoReader(video, size=cfg.decode_hw) as reader:
                return extract_features_prefetch(enc, reader, cfg.augment, man['frame_stride'], window, man['margin'], batch)
        run = lambda r: extract(ck, video, d / f'out{r}', device='cpu', progress=False, log=None)
        res = compare({'extract': run, 'before': lambda r: baseline.run_before(run, r), 'prefetch': prefetch, 'bare': bare}, reps)
        ref = np.load(d / 'warm' / next(iter(man['videos'].values()))['features'])
        same = bool(np.allclose(prefetch(0), ref, atol=1e-5))
    e, b, pf, eb = res['extract'], res['bare'], res['prefetch'], res['before']
    clips_bare = n_fwd * window * batch
    return dict(size=size, rows=rows, window=window, margin=man['margin'], extract=e.median, extract_cpu=e.cpu_median,
                bare=b.median, bare_cpu=b.cpu_median, clips_per_s=rows / e.median, bare_clips_per_s=clips_bare / b.median,
                ratio=paired(b, e) * rows / clips_bare, ratio_cpu=paired(b, e, cpu=True) * rows / clips_bare,
                prefetch=pf.median, prefetch_cpu=pf.cpu_median, prefetch_ratio=paired(b, pf) * rows / clips_bare,
                prefetch_same_features=same, before=eb.median, before_cpu=eb.cpu_median,
                ratio_before=paired(b, eb) * rows / clips_bare, speedup=paired(eb, e), prefetch_speedup=paired(e, pf))


def run(quick: bool = False, log=print) -> dict:
    out = {}
    for size in ((32,) if quick else (32, 112)):
        out[size] = measure(size, 2 if quick else 3)
        log(f'  extraction {size}px: {out[size]}')
    return out
