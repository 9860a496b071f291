"""1. Decode: the frames one PAL sample needs, decoded sparsely, vs decoding the whole three videos.

A PAL sample reads a source video and two backgrounds. `pal.paste.load_bank` asks each reader for the
unique frames the plan needs (about 123 of them at the defaults: n_clips 8 x clip_len 8, frame_stride
2); the alternative is to decode every frame of the three videos (what an in-memory cache does).
Both go through the same `VideoReader` at the 112-px training decode size (128x171). Also measured:
the decoder change of this issue (decord's seeking, the old default, vs the PyAV path indexed from
packets) and the reused scaler on the PyAV path.
"""
from __future__ import annotations
import time

import torch

from common import bench_videos, compare, ms, paired
import baseline

DECODE_HW = (128, 171)  # pal.train.TrainConfig(size=112).decode_hw


def _plans(n_frames: int, k: int):
    from pal.sampling import sample_plan
    return [sample_plan(n_frames, (n_frames, n_frames), seed=s) for s in range(k)]


def sparse_vs_whole(kind: str, reps: int) -> dict:
    "Time `load_bank` (sparse) against `get(all frames)` of the same three readers, interleaved."
    from pal.video import VideoReader
    from pal.paste import load_bank
    paths = bench_videos(kind)[:3]
    t = time.perf_counter(); readers = [VideoReader(p, size=DECODE_HW) for p in paths]
    first = (time.perf_counter() - t) / 3  # probe + pts table, once per file and process
    plans = _plans(readers[0].num_frames, reps + 1)
    needed = sum(len(load_bank(p, readers[0], readers[1:]).frames) for p in plans[:3]) / 3
    res = compare({'sparse': lambda r: load_bank(plans[r], readers[0], readers[1:]),
                   'whole': lambda r: [v.get(torch.arange(v.num_frames)) for v in readers]}, reps)
    s, w = res['sparse'], res['whole']
    return dict(kind=kind, frames=readers[0].num_frames, needed=needed, first_open=first,
                sparse=s.median, sparse_cpu=s.cpu_median, whole=w.median, whole_cpu=w.cpu_median,
                ratio=paired(w, s), ratio_cpu=paired(w, s, cpu=True))


def decord_vs_pyav(kind: str, reps: int) -> dict:
    "The frames of one sample through decord's seeking (the old default) vs the PyAV path (the new one)."
    from pal.video import VideoReader
    from pal.paste import load_bank
    paths = bench_videos(kind)[:3]
    R = {m: [VideoReader(p, size=DECODE_HW, mode=m) for p in paths] for m in ('decord', 'auto')}
    plans = _plans(R['auto'][0].num_frames, reps + 1)
    res = compare({m: (lambda r, m=m: load_bank(plans[r], R[m][0], R[m][1:])) for m in R}, reps)
    return dict(kind=kind, before=res['decord'].median, before_cpu=res['decord'].cpu_median,
                after=res['auto'].median, after_cpu=res['auto'].cpu_median,
                speedup=paired(res['decord'], res['auto']), speedup_cpu=paired(res['decord'], res['auto'], cpu=True))


def scaler_reuse(reps: int) -> dict:
    "The PyAV path reading one sample's frames with a new scaler per frame (before) vs one reused scaler."
    import pal.video as V
    from pal.paste import load_bank
    paths = bench_videos('untrimmed')[:3]
    readers = [V.VideoReader(p, size=DECODE_HW) for p in paths]
    plans = _plans(readers[0].num_frames, reps + 1)
    new = V._rgb
    def before(r):
        V._rgb = baseline.rgb_before
        try: load_bank(plans[r], readers[0], readers[1:])
        finally: V._rgb = new
    res = compare({'before': before, 'after': lambda r: load_bank(plans[r], readers[0], readers[1:])}, reps)
    return dict(before=res['before'].median, before_cpu=res['before'].cpu_median,
                after=res['after'].median, after_cpu=res['after'].cpu_median,
                speedup=paired(res['before'], res['after']), speedup_cpu=paired(res['before'], res['after'], cpu=True))


def run(quick: bool = False, log=print) -> dict:
    reps = 2 if quick else 4
    out = dict(untrimmed=sparse_vs_whole('untrimmed', reps))
    log(f"  decode untrimmed: sparse {ms(out['untrimmed']['sparse'])}, whole {ms(out['untrimmed']['whole'])}")
    if not quick:
        out['trimmed'] = sparse_vs_whole('trimmed', reps)
        log(f"  decode trimmed: sparse {ms(out['trimmed']['sparse'])}, whole {ms(out['trimmed']['whole'])}")
    out['decoder'] = {k: decord_vs_pyav(k, 3 if quick else 8) for k in (['untrimmed'] if quick else ['untrimmed', 'trimmed'])}
    log(f"  decoder: {out['decoder']}")
    out['scaler'] = scaler_reuse(3 if quick else 6)
    log(f"  scaler reuse: {out['scaler']}")
    return out
