"""`pal-extract` over a folder of short videos, one video at a time (`jobs=1`) vs two at a time (`jobs=2`,
the default), interleaved, on the test split of the toy benchmark that `pal-bench --small` uses (48 videos
of 10-20 s at 8 fps, 40 px; generated into ~/.cache/pal if missing) with the shipped `checkpoints/pal.pt`.
A short video is a single window, so the prefetch thread inside `extract_features` has nothing to overlap;
two videos at once overlap one's decoding with the other's forward. Features are checked to be identical.

    python benchmarks/folder_extraction.py
"""
import statistics, tempfile, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main(reps: int = 3):
    from pal.features import extract
    from pal.toybench import generate, toy_config
    torch.set_num_threads(1)
    folder = generate(toy_config('small', n_train=48, n_test=48)).split_dir('test')
    ts = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as d:
        for r in range(reps):
            for j in ((1, 2) if r % 2 == 0 else (2, 1)):
                t = time.perf_counter()
                man = extract(ROOT / 'checkpoints' / 'pal.pt', folder, Path(d) / f'j{j}', progress=False, log=None, jobs=j)
                ts[j].append(time.perf_counter() - t)
        same = all(np.array_equal(np.load(Path(d) / 'j1' / v['features']), np.load(Path(d) / 'j2' / v['features']))
                   for v in man['videos'].values())
    a, b = statistics.median(ts[1]), statistics.median(ts[2])
    print(f'{len(man["videos"])} videos from {folder}: jobs=1 {a:.2f} s, jobs=2 {b:.2f} s (medians of {reps}), '
          f'{a / b:.2f}x; same features: {same}')


if __name__ == '__main__':
    main()
