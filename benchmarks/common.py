"""Shared pieces of the benchmarks: interleaved timing, machine description, benchmark videos."""
from __future__ import annotations
import os, platform, subprocess, statistics, time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository
CACHE = ROOT / 'benchmarks' / '.cache'  # generated videos (git-ignored: `.cache/`)
THREADS = 1  # torch threads in every measurement (the machine is shared; one thread per process is the fair unit)


@dataclass
class Timing:
    "Wall and process-CPU seconds of each repetition of one thing."
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    @property
    def median(self) -> float: return statistics.median(self.wall)
    @property
    def cpu_median(self) -> float: return statistics.median(self.cpu)
    @property
    def spread(self) -> float:
        "Half the interquartile-ish range (min..max of the middle) relative to the median, a noise hint."
        w = sorted(self.wall)
        return (w[-1] - w[0]) / 2 / self.median if len(w) > 1 else 0.0


def compare(fns: dict[str, Callable[[int], object]], reps: int, warmup: int = 1) -> dict[str, Timing]:
    """Time each `fns[name](rep)` `reps` times, interleaved (A B, B A, A B ...) so that load changes
    on the shared machine hit all of them alike; `warmup` untimed rounds first."""
    out = {k: Timing() for k in fns}
    names = list(fns)
    for r in range(-warmup, reps):
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            t, c = time.perf_counter(), time.process_time()
            fns[k](max(r, 0))
            dt, dc = time.perf_counter() - t, time.process_time() - c
            if r >= 0: out[k].wall.append(dt); out[k].cpu.append(dc)
    return out


def paired(a: Timing, b: Timing, cpu: bool = False) -> float:
    "Median over repetitions of a's time / b's time in the same round: steadier than a ratio of medians when the load drifts."
    x, y = (a.cpu, b.cpu) if cpu else (a.wall, b.wall)
    return statistics.median(i / j for i, j in zip(x, y))


def paired_spread(a: Timing, b: Timing) -> tuple[float, float]:
    "The middle half of the per-round ratios a / b (25th and 75th percentile): how much the rounds disagree."
    q = np.quantile([i / j for i, j in zip(a.wall, b.wall)], [0.25, 0.75])
    return float(q[0]), float(q[1])


def ms(x: float) -> str: return f'{1e3 * x:.0f} ms' if x < 10 else f'{x:.1f} s'


def machine() -> dict:
    "What the numbers were measured on."
    cpu = platform.processor() or ''
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'): cpu = line.split(':', 1)[1].strip(); break
    except OSError: pass
    try: commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError: commit = '?'
    try: dirty = bool(subprocess.run(['git', 'status', '--porcelain', '--', 'pal'], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    except OSError: dirty = False
    import av, decord, torchvision
    return dict(cpu=cpu, cores=os.cpu_count(), load=os.getloadavg(), python=platform.python_version(),
                torch=torch.__version__, torchvision=torchvision.__version__, av=av.__version__, decord=decord.__version__,
                threads=THREADS, cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                commit=commit + (' + uncommitted changes in pal/' if dirty else ''), date=time.strftime('%Y-%m-%d %H:%M %Z'))


# ---- benchmark videos ------------------------------------------------------------------------------
# The sample videos in data_samples/ are 2-8 s long and tiny (about 100x100): good for tests, not for
# measuring decoding. These are closer to what PAL reads: 240x320 H.264 (B-frames, a keyframe every
# 2 s, as web video), either trimmed (10 s, Kinetics-like) or untrimmed (60 s, ActivityNet-like).
# Content: procedural scenes (pal.samples.render_scene) cut into 2 s shots that are shifted, mirrored and
# reversed, so that no two shots are the same and the encoder has real work.

VIDEO_SETS = dict(untrimmed=dict(n=6, seconds=60), trimmed=dict(n=6, seconds=10))
FPS, HW = 30, (240, 320)


def _shots(seed: int) -> list[np.ndarray]:
    from pal.samples import render_scene
    looks = [('plaid', ((40, 60, 90), (150, 170, 200)), [('disc', (230, 40, 40)), ('square', (250, 220, 30))]),
             ('checker', ((60, 90, 40), (170, 200, 140)), [('diamond', (200, 40, 220))]),
             ('stripes', ((80, 80, 80), (190, 190, 190)), [('disc', (240, 120, 20)), ('ring', (30, 60, 240))])]
    return [render_scene(2 * FPS, *HW, texture=t, palette=p, objects=o, seed=seed + i, index_code=False)
            for i, (t, p, o) in enumerate(looks)]


def bench_videos(kind: str = 'untrimmed', log=print) -> list[Path]:
    "The benchmark videos of `kind` ('untrimmed' or 'trimmed'), generated once into benchmarks/.cache/."
    from pal.samples import write_video
    spec = VIDEO_SETS[kind]
    folder = CACHE / f'{kind}_{spec["seconds"]}s_{HW[0]}x{HW[1]}'
    paths = [folder / f'{kind}{i}.mp4' for i in range(spec['n'])]
    if all(p.exists() for p in paths): return paths
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    shots = _shots(seed=7)
    for i, p in enumerate(paths):
        if p.exists(): continue
        rng = np.random.default_rng(100 + i)
        parts = []
        for j in range(spec['seconds'] // 2):
            s = shots[int(rng.integers(len(shots)))]
            s = np.roll(s, (int(rng.integers(HW[0])), int(rng.integers(HW[1]))), axis=(1, 2))
            if rng.random() < 0.5: s = s[:, :, ::-1]
            if rng.random() < 0.5: s = s[::-1]
            parts.append(s)
        tmp = p.with_name('.' + p.name)
        write_video(tmp, np.concatenate(parts), FPS, 'libx264', crf=23, g=2 * FPS, preset='veryfast', threads=1)
        tmp.rename(p)
    if log: log(f'generated {len(paths)} {kind} benchmark videos in {time.perf_counter() - t:.0f} s -> {folder}')
    return paths


def setup_torch():
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
