"""The implementations before the optimisations of issue 7, frozen here so that each benchmark can
time 'before' and 'after' in the same run (interleaved) instead of on two different days.
Copied from pal at commit f8b7275; each function says what replaced it."""
from __future__ import annotations

import av
import torch
import torch.nn.functional as F
from torch import Tensor

from pal.synthesis import AugmentConfig, AugmentParams, colour_matrix, _LUMA


# ---- pal.paste.apply_augment before: float copy of the whole frames, one grid_sample over the batch,
# out-of-place colour ops. Replaced by a uint8 slice + F.interpolate per video and in-place colour ops.

def _jitter_before(x: Tensor, color: Tensor, gray: Tensor) -> Tensor:
    N = len(x)
    v = lambda c: c.view(-1, 1, 1, 1, 1)
    x = (x * v(color[:, 0])).clamp_(0, 1)
    m = torch.einsum('c,nc->n', _LUMA.to(x.device), x.mean((2, 3, 4)))
    x = (x * v(color[:, 1]) + v(m * (1 - color[:, 1]))).clamp_(0, 1)
    x = torch.bmm(colour_matrix(color, gray), x.reshape(N, 3, -1)).view_as(x)
    return x.clamp_(0, 1)


def apply_augment_before(videos: Tensor, params: AugmentParams, cfg: AugmentConfig | None = None) -> Tensor:
    cfg = cfg or AugmentConfig()
    *lead, T, H, W, _ = videos.shape
    dev, (h, w) = videos.device, cfg.size
    x = videos.reshape(-1, T, H, W, 3).permute(0, 1, 4, 2, 3).reshape(-1, T * 3, H, W).float() / 255
    N = x.shape[0]
    y0, x0, bh, bw = params.box.to(dev).unbind(1)
    sx = bw / W * torch.where(params.flip.to(dev), -1.0, 1.0)
    theta = torch.zeros(N, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = sx, 2 * (x0 + bw / 2) / W - 1
    theta[:, 1, 1], theta[:, 1, 2] = bh / H, 2 * (y0 + bh / 2) / H - 1
    grid = F.affine_grid(theta, [N, T * 3, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)
    x = x.view(N, T, 3, h, w).transpose(1, 2).contiguous()
    x = _jitter_before(x, params.color.to(dev), params.gray.to(dev))
    mean, std = (torch.tensor(c, device=dev).view(1, 3, 1, 1, 1) for c in (cfg.mean, cfg.std))
    return ((x - mean) / std).reshape(*lead, 3, T, h, w)


# ---- pal.video before: the RGB conversion made a new scaler (SwsContext) for every frame.
# Replaced by one VideoReformatter per read.

def rgb_before(frame: av.VideoFrame, size, fmt=None):
    if size is None: return frame.to_ndarray(format='rgb24')
    return frame.reformat(height=size[0], width=size[1], format='rgb24', interpolation='BILINEAR').to_ndarray()


# ---- everything at once ---------------------------------------------------------------------------

import contextlib


def _extract_module():
    "The module whose `extract` looks `extract_features` and `window_plan` up: `pal.extract` since the course split, `pal.features` before."
    return _try_import('pal.extract') or _try_import('pal.features')


@contextlib.contextmanager
def no_prefetch():
    "Inside this block `pal.extract.extract` calls `extract_features(..., prefetch=False)`: decoding and the encoder take turns."
    feats = _extract_module()
    ef = getattr(feats, 'extract_features', None)
    if ef is not None: feats.extract_features = lambda *a, **k: ef(*a, **{**k, 'prefetch': False})
    try: yield
    finally:
        if ef is not None: feats.extract_features = ef


def window_plan_before(rows: int, window: int, margin: int) -> list[tuple[int, int, int]]:
    "`pal.features.window_plan` before change G: full-size windows, the last one flush with the end of the video."
    if rows <= window: return [(0, 0, rows)]
    if window <= 2 * margin: raise ValueError(f'a window of {window} clips keeps nothing with a margin of {margin} clips')
    plan, start, kept = [], 0, 0
    while True:
        last = start + window >= rows
        if last: start = rows - window
        end = rows if last else start + window - margin
        plan.append((start, kept, end)); kept = end
        if last: return plan
        start += window - 2 * margin


@contextlib.contextmanager
def flush_last_window():
    "Inside this block `pal.extract.extract_features` plans its windows as before change G."
    feats = _extract_module()
    wp = getattr(feats, 'window_plan', None)
    if wp is not None: feats.window_plan = window_plan_before
    try: yield
    finally:
        if wp is not None: feats.window_plan = wp


@contextlib.contextmanager
def before():
    """Inside this block pal behaves as before issue 7: `VideoReader` defaults to decord (mode='auto' then
    meant decord for every file the probe trusted), the PyAV path makes a scaler per frame and seeks at
    every keyframe, augmentation (also `pal.features.preprocess`) is the whole-frame float grid_sample,
    and `pal.features.extract` decodes and encodes in turn (`extract_features(..., prefetch=False)`), with the
    last window of a video full-size and flush with its end.
    Not reverted: `VideoReader.get` no longer copies frames already in order (a small saving)."""
    import sys, pal.video as V
    for name in ('pal.paste', 'pal.synthesis', 'pal.data', 'pal.train', 'pal.features', 'pal.extract'): _try_import(name)
    # every pal module that calls apply_augment by its global name (since the course split: pal.synthesis, pal.data, pal.features)
    mods = [m for n, m in sorted(sys.modules.items()) if n.startswith('pal.') and 'apply_augment' in vars(m)]
    saved = (V.VideoReader.__init__.__defaults__, V._rgb, V._SEEK_GAP, [m.apply_augment for m in mods])
    V.VideoReader.__init__.__defaults__ = (None, 'decord')
    V._rgb, V._SEEK_GAP = rgb_before, 0
    for m in mods: m.apply_augment = apply_augment_before
    try:
        with no_prefetch(), flush_last_window(): yield
    finally:
        V.VideoReader.__init__.__defaults__, V._rgb, V._SEEK_GAP, fns = saved
        for m, f in zip(mods, fns): m.apply_augment = f


def _try_import(name):
    import importlib
    try: return importlib.import_module(name)
    except ImportError: return None


def run_before(fn, *args, **kw):
    "`fn(*args, **kw)` inside `before()`."
    with before(): return fn(*args, **kw)
