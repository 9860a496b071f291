"""2. Synthesis: what one PAL sample costs (plan + decode + paste + augment), and whether the data
loader keeps up with training.

* Per sample, one process, one thread: `sample_plan`, `load_bank` (sparse decode), `paste_batch`,
  `augment`, before (decord, whole-frame float `grid_sample`) and after this issue's changes.
* Loader throughput: `pal.train.make_loader` with the default workers (`min(4, CPUs)` when videos are
  not cached), iterated without training, against the training step rate (`make_inputs` + forward,
  backward, optimizer step in the main process), both measured here.
* A short real `pal.train.fit` run: its `log.csv` says how long each step waited for data (`data_time`,
  which includes `make_inputs`: paste and augment on the training device) out of `step_time`.
"""
from __future__ import annotations
import os, statistics, tempfile, time

import torch

from common import bench_videos, compare, paired
import baseline


def _cfg(size: int, steps: int, out: str = 'runs/unused', **kw):
    from pal.train import TrainConfig
    videos = bench_videos('untrimmed')[0].parent
    kw = {'cache_mb': 0, **kw}  # not cached unless asked
    return TrainConfig(videos=str(videos), out=out, size=size, batch_size=6, steps=steps, ckpt_every=10 ** 6, **kw)


def per_sample(size: int, reps: int) -> dict:
    "Plan + decode + paste + augment of one sample, before vs after (interleaved), and where the time goes."
    import pal.paste as P
    from pal.video import VideoReader
    from pal.sampling import sample_plan
    cfg = _cfg(size, 1)
    paths = bench_videos('untrimmed')[:3]
    R = {m: [VideoReader(p, size=cfg.decode_hw, mode=m) for p in paths] for m in ('decord', 'auto')}
    n = R['auto'][0].num_frames
    H, W = cfg.decode_hw
    parts = {}
    def sample(r, readers, note=None):
        t0 = time.perf_counter(); plan = sample_plan(n, (n, n), cfg.paste, seed=r)
        t1 = time.perf_counter(); bank = P.load_bank(plan, readers[0], readers[1:])
        t2 = time.perf_counter(); videos = P.paste_batch(*P.collate_banks([bank]))  # [1, 2, T, H, W, 3]
        t3 = time.perf_counter(); P.apply_augment(videos, P.sample_augment(2, H, W, cfg.augment, r), cfg.augment)
        t4 = time.perf_counter()
        for k, dt in zip(('plan', 'decode', 'paste', 'augment'), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts.setdefault((note, k), []).append(dt)
    res = compare({'before': lambda r: baseline.run_before(sample, r, R['decord'], 'before'),
                   'after': lambda r: sample(r, R['auto'], 'after')}, reps)
    # the augmentation alone, before vs after, on the pasted videos of a mini-batch of 6 samples
    plan = sample_plan(n, (n, n), cfg.paste, seed=0)
    videos = P.paste_batch(*P.collate_banks([P.load_bank(plan, R['auto'][0], R['auto'][1:])] * 6))
    p = P.sample_augment(12, H, W, cfg.augment, 0)
    aug = compare({'before': lambda r: baseline.apply_augment_before(videos, p, cfg.augment),
                   'after': lambda r: P.apply_augment(videos, p, cfg.augment)}, reps)
    return dict(size=size, decode_hw=cfg.decode_hw, before=res['before'].median, before_cpu=res['before'].cpu_median,
                after=res['after'].median, after_cpu=res['after'].cpu_median, speedup=paired(res['before'], res['after']),
                speedup_cpu=paired(res['before'], res['after'], cpu=True), augment_speedup=paired(aug['before'], aug['after']),
                parts={f'{a} {k}': statistics.median(v) for (a, k), v in parts.items()},
                augment_batch_before=aug['before'].median, augment_batch_after=aug['after'].median,
                augment_batch_before_cpu=aug['before'].cpu_median, augment_batch_after_cpu=aug['after'].cpu_median)


def default_workers() -> int:
    "What `pal.train.fit` uses when the videos are not cached in memory."
    return min(4, os.cpu_count() or 1)


def _loader_rate(ds, workers: int) -> tuple[float, float, object]:
    "Seconds per batch of the loader after its first batch, the first batch's delay, and the last batch."
    from pal.train import make_loader
    t0 = time.perf_counter(); stamps = []
    for batch in make_loader(ds, 0, workers=workers): stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1), stamps[0] - t0, batch


def loader_vs_step(size: int, steps: int, reps: int = 2) -> dict:
    "Batches per second of the loader alone (default workers; before and after) vs steps per second of training alone."
    from pal.train import probe_videos, PalDataset, make_inputs, build_objective, make_optimizer
    cfg = _cfg(size, steps)
    good, _ = probe_videos(bench_videos('untrimmed'), cfg.decode_hw, cfg.min_frames, 0, 1, log=None)
    workers = default_workers()
    rates = {'before': [], 'after': []}
    for r in range(reps):  # a fresh dataset each time: its readers are opened in the workers
        for k in (('before', 'after') if r % 2 == 0 else ('after', 'before')):
            run = (lambda: baseline.run_before(_loader_rate, PalDataset(good, cfg), workers)) if k == 'before' else \
                  (lambda: _loader_rate(PalDataset(good, cfg), workers))
            sec, startup, batch = run()
            rates[k].append(sec)
    loader, loader_before = statistics.median(rates['after']), statistics.median(rates['before'])
    torch.manual_seed(0)
    model = build_objective(cfg); opt = make_optimizer(model, cfg)
    ids = torch.arange(cfg.batch_size)
    def step(r, train=True):
        x = make_inputs(batch, cfg)
        if not train: return
        loss, stats = model(x, batch.spans, ids)
        stats = torch.stack([loss.detach(), stats['pos_sim'], stats['neg_sim'], stats['top1']]).tolist()
        opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad); opt.step()
    st = compare({'step': step, 'inputs': lambda r: step(r, False)}, reps=3 if size > 64 else 5)
    return dict(size=size, workers=workers, loader=loader, loader_before=loader_before, loader_startup=startup,
                step=st['step'].median, step_cpu=st['step'].cpu_median, make_inputs=st['inputs'].median,
                ratio=st['step'].median / loader, ratio_before=st['step'].median / loader_before)


def loader_cached(size: int, steps: int) -> dict:
    """The loader as `fit` runs it with its default `cache_mb` when the videos fit in memory: decoded once,
    then every batch is cut from memory in the training process (0 workers); seconds per batch vs the step."""
    from pal.train import TrainConfig, probe_videos, PalDataset
    cfg = _cfg(size, steps, cache_mb=TrainConfig.cache_mb)
    t = time.perf_counter()
    good, _ = probe_videos(bench_videos('untrimmed'), cfg.decode_hw, cfg.min_frames, cfg.cache_mb, 1, log=None)
    decode_once = time.perf_counter() - t
    cached = all(v.frames is not None for v in good)
    sec, _, _ = _loader_rate(PalDataset(good, cfg), 0)
    mb = sum(v.frames.numel() for v in good if v.frames is not None) / 2 ** 20
    return dict(size=size, cache_mb=cfg.cache_mb, cached=cached, cached_mb=mb, decode_once=decode_once, loader=sec)


def fit_log(size: int, steps: int, **kw) -> dict:
    "A real `fit` run from the untrimmed videos (not cached unless `kw` says so): median data_time and step_time of its log."
    from pal.train import fit, read_log
    with tempfile.TemporaryDirectory() as d:
        cfg = _cfg(size, steps, out=d, **kw)
        t = time.perf_counter()
        run = fit(cfg, overwrite=True, progress=False, log=None)
        total = time.perf_counter() - t
        rows = read_log(run.out / 'log.csv')[1:]  # the first step also waits for the workers to start
    data = statistics.median(r['data_time'] for r in rows)
    step = statistics.median(r['step_time'] for r in rows)
    return dict(size=size, steps=steps, data_time=data, step_time=step, wait_fraction=data / step, total=total)


def run(quick: bool = False, log=print) -> dict:
    out = dict(per_sample={}, loader={}, fit={})
    for size in ((32,) if quick else (32, 112)):
        out['per_sample'][size] = per_sample(size, 2 if quick else 4)
        log(f"  per sample {size}px: {out['per_sample'][size]}")
    for size, steps in (((32, 6),) if quick else ((32, 12), (112, 6))):
        out['loader'][size] = loader_vs_step(size, steps)
        log(f"  loader {size}px: {out['loader'][size]}")
        out['fit'][size] = fit_log(size, steps)
        log(f"  fit {size}px: {out['fit'][size]}")
        c = loader_cached(size, steps)  # the default cache_mb: what fit does when the videos fit in memory
        if c['cached']:
            c['step'] = out['loader'][size]['step']; c['ratio'] = c['step'] / c['loader']
            c['fit'] = fit_log(size, steps, cache_mb=c['cache_mb'])
        out.setdefault('cached', {})[size] = c
        log(f"  cached {size}px: {c}")
    return out
