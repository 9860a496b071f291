"""Does `pal.samples.write_video` write the same video twice? Writes toy-benchmark videos (small
preset, train split) five times each in one process, decoding each file and running a small torch
op in between, as generation does, and counts the distinct decoded videos, with the default libx264
settings and with x264's macroblock-tree rate control off. Quoted in notebook 09 ("How much a rerun
moves the numbers"). Usage: `python benchmarks/encoder_repeat.py [--videos 4] [--writes 5]`."""
import argparse, hashlib, tempfile
from pathlib import Path

import av
import numpy as np
import torch

from pal.samples import write_video
from pal.toybench import toy_config, sample_scene, render


def decoded_digest(path: Path) -> str:
    "MD5 of the decoded RGB frames (not of the file's bytes)."
    with av.open(str(path)) as c:
        return hashlib.md5(np.stack([f.to_ndarray(format='rgb24') for f in c.decode(video=0)]).tobytes()).hexdigest()


def distinct(n_videos: int, n_writes: int, **options) -> list[int]:
    "Distinct decoded videos among `n_writes` writes of each of the first `n_videos` training scenes."
    cfg, out = toy_config('small'), Path(tempfile.mkdtemp())
    counts = []
    for k in range(n_videos):
        frames, seen = render(sample_scene(cfg, 'train', k)), set()
        for i in range(n_writes):
            seen.add(decoded_digest(write_video(out / f'{k}_{i}.mp4', frames, cfg.fps, crf=cfg.crf, threads=1, **options)))
            torch.randn(64, 64) @ torch.randn(64, 64)
        counts.append(len(seen))
    return counts


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--videos', type=int, default=4)
    ap.add_argument('--writes', type=int, default=5)
    a = ap.parse_args()
    print(f'PyAV {av.__version__}, libavcodec {".".join(map(str, av.library_versions["libavcodec"]))}')
    for name, opts in (('default (as the toy benchmark writes)', {}), ("x264-params mbtree=0", {'x264-params': 'mbtree=0'})):
        print(f'{name}: distinct decoded videos per {a.writes} writes of each video: {distinct(a.videos, a.writes, **opts)}')
