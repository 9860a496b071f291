"""5. GPU: r2plus1d_18 at 112 px, bf16 autocast, channels_last_3d, optional torch.compile: clips/s for
PAL training and for extraction, and MFU from counted FLOPs against a measured bf16 matmul peak.

One shot, under 5 minutes on an H100/H200. Needs only torch and torchvision (pal.encoder and
pal.loss import nothing else). With PyAV and decord importable (carried as wheels, see BENCHMARKS.md)
and the benchmark videos in benchmarks/.cache/ (carried), it also measures the data loader with the
default workers against the GPU step, and `pal-extract` end to end (two videos at once, and `auto_jobs`).

    python3 benchmarks/gpu.py --out $OUT            # on the GPU machine, from the repository root
    python benchmarks/gpu.py --cpu-smoke            # here: tiny sizes on the CPU, checks the script runs

Writes benchmarks/results/perf_gpu.json (and OUT/perf_gpu.json); `benchmarks/run.py` puts it in BENCHMARKS.md.
MFU = (FLOPs of one step counted by torch.utils.flop_counter.FlopCounterMode: convolutions and matrix
products, forward and backward) x steps per second / (the bf16 matmul rate measured on the same card).
"""
from __future__ import annotations
import argparse, json, os, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pal.encoder import Encoder  # noqa: E402
from pal.loss import PAL  # noqa: E402

N_CLIPS, CLIP_LEN = 8, 8  # pal defaults: a synthetic video is 8 clips of 8 frames
T = N_CLIPS * CLIP_LEN


def log(*a): print(*a, flush=True)


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)


def matmul_peak(dev, dtype, sizes=(4096, 8192, 16384), iters=20) -> float:
    "The best measured matmul rate over a few square sizes, FLOP/s."
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
        for _ in range(3): a @ b
        sync(dev); t = time.perf_counter()
        for _ in range(iters): a @ b
        sync(dev); dt = (time.perf_counter() - t) / iters
        best = max(best, 2 * n ** 3 / dt)
        del a, b
    return best


def make_batch(B: int, size: int, dev, channels_last: bool, seed: int = 0):
    "Random training inputs `[B, 2, 3, T, size, size]` (each video channels-last in memory if asked) and spans."
    g = torch.Generator(device='cpu').manual_seed(seed)
    x = torch.randn(2 * B, 3, T, size, size, generator=g).to(dev)
    if channels_last: x = x.contiguous(memory_format=torch.channels_last_3d)
    x = x.view(B, 2, 3, T, size, size)  # splitting dim 0 keeps the per-video layout
    a = torch.rand(B, 2, generator=g) * (N_CLIPS - 3)
    spans = torch.stack([a, a + 1 + 2 * torch.rand(B, 2, generator=g)], -1).to(dev)  # [B, 2, 2] clips
    return x, spans, torch.arange(B, device=dev)


def build(dev, channels_last: bool, backbone: str):
    torch.manual_seed(0)
    model = PAL(Encoder(backbone, clip_len=CLIP_LEN)).to(dev)
    if channels_last: model = model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    return model, opt


def train_step(model, opt, x, spans, ids, amp: bool, host_sync: bool = True):
    "What pal.train.fit does per step once the batch is on the device (its per-step .tolist() is `host_sync`)."
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss, stats = model(x, spans, ids)
    if host_sync: torch.stack([loss.detach(), stats['pos_sim'], stats['neg_sim'], stats['top1']]).float().tolist()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc: fn()
    return float(fc.get_total_flops())


def fits(B: int, size: int, dev, backbone: str, budget: float) -> bool:
    "Does one training step at batch B stay under `budget` of the card's memory?"
    if dev.type != 'cuda': return B <= 2
    model, opt = build(dev, True, backbone)
    try:
        torch.cuda.reset_peak_memory_stats(dev)
        train_step(model, opt, *make_batch(B, size, dev, True), amp=True)
        sync(dev)
        peak = torch.cuda.max_memory_allocated(dev) / torch.cuda.get_device_properties(dev).total_memory
        log(f'  batch {B}: peak memory {100 * peak:.0f}% of the card')
        return peak <= budget
    except torch.OutOfMemoryError:
        log(f'  batch {B}: out of memory'); return False
    finally:
        del model, opt
        torch.cuda.empty_cache()


def time_steps(fn, steps: int, dev, warmup: int = 3) -> float:
    for _ in range(warmup): fn()
    sync(dev); t = time.perf_counter()
    for _ in range(steps): fn()
    sync(dev)
    return (time.perf_counter() - t) / steps


def training(args, dev, peak) -> dict:
    size, backbone = args.size, args.backbone
    if args.batch: B = args.batch
    else:
        B = 2
        while B * 2 <= args.max_batch and fits(B * 2, size, dev, backbone, 0.8): B *= 2
    log(f'training: batch {B} samples = {2 * B} synthetic videos of {T} frames at {size} px')
    model, opt = build(dev, False, backbone)
    x, spans, ids = make_batch(1, size, dev, False)
    flops_per_sample = count_flops(lambda: train_step(model, opt, x, spans, ids, amp=args.amp))
    del model, opt
    clips = 2 * B * N_CLIPS
    variants = [('eager, NCDHW (pal.train before its channels_last option)', False, False, True),
                ('eager, channels_last_3d (as pal.train today on CUDA)', True, False, True),
                ('eager, channels_last_3d, no per-step host sync', True, False, False)]
    if args.compile: variants.append(('torch.compile, channels_last_3d', True, True, True))
    out = []
    for name, cl, comp, hs in variants:
        model, opt = build(dev, cl, backbone)
        x, spans, ids = make_batch(B, size, dev, cl)
        run = torch.compile(model) if comp else model
        t0 = time.perf_counter()
        try:
            sec = time_steps(lambda: train_step(run, opt, x, spans, ids, amp=args.amp, host_sync=hs), args.steps, dev)
        except Exception as e:  # a compile failure must not lose the other numbers
            log(f'  {name}: failed ({type(e).__name__}: {str(e)[:200]})'); del model, opt; continue
        r = dict(variant=name, batch=B, step_s=sec, clips_per_s=clips / sec, tflops=flops_per_sample * B / sec / 1e12,
                 mfu=flops_per_sample * B / sec / peak, wall_incl_warmup_s=time.perf_counter() - t0)
        log(f"  {name}: {1e3 * sec:.0f} ms/step, {r['clips_per_s']:.0f} clips/s, {r['tflops']:.0f} TFLOP/s, MFU {100 * r['mfu']:.0f}%")
        out.append(r)
        del model, opt, run, x
        if dev.type == 'cuda': torch.cuda.empty_cache()
    return dict(batch=B, flops_per_sample=flops_per_sample, variants=out)


def extraction(args, dev, peak) -> dict:
    "Encoder forward on windows of 32 clips (what pal-extract feeds it), bf16, channels_last_3d."
    size, win = args.size, 32
    torch.manual_seed(0)
    enc = Encoder(args.backbone, clip_len=CLIP_LEN).to(dev).eval().to(memory_format=torch.channels_last_3d)
    x1 = torch.randn(1, 3, win * CLIP_LEN, size, size, device=dev).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp):
        flops_per_window = count_flops(lambda: enc(x1))
    out = []
    for b in ((1, 2) if dev.type != 'cuda' else (4, 8, 16, 32)):
        try:
            x = torch.randn(b, 3, win * CLIP_LEN, size, size, device=dev).contiguous(memory_format=torch.channels_last_3d)
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp):
                sec = time_steps(lambda: enc(x), max(3, args.steps // 2), dev)
        except torch.OutOfMemoryError:
            log(f'  extraction batch {b}: out of memory'); break
        r = dict(windows=b, clips_per_s=b * win / sec, mfu=flops_per_window * b / sec / peak)
        log(f"  extraction {b} windows x {win} clips: {r['clips_per_s']:.0f} clips/s, MFU {100 * r['mfu']:.0f}%")
        out.append(r)
        del x
    return dict(window=win, flops_per_window=flops_per_window, batches=out)


def data_side(args, dev, step_s: float, B: int) -> dict:
    "With PyAV + decord and the benchmark videos: the loader (default and all workers) vs the GPU step; pal-extract vs bare."
    try:
        import av, decord  # noqa: F401
        from pal.train import TrainConfig, probe_videos, PalDataset, make_loader
    except ImportError as e:
        log(f'data side skipped: {e} (carry PyAV and decord wheels, see BENCHMARKS.md)'); return dict(skipped=str(e))
    folder = ROOT / 'benchmarks' / '.cache' / 'untrimmed_60s_240x320'
    if not folder.is_dir():
        log(f'data side skipped: {folder} missing (carry benchmarks/.cache)'); return dict(skipped='no videos')
    torch.set_num_threads(1)
    cfg = TrainConfig(videos=str(folder), size=args.size, batch_size=B, cache_mb=0, steps=args.loader_batches + 1)
    good, _ = probe_videos(sorted(folder.glob('*.mp4')), cfg.decode_hw, cfg.min_frames, 0, 8, log=None)
    res = {}
    from pal.train import _auto_workers
    for workers in sorted({min(4, os.cpu_count() or 1), _auto_workers(dev, False)}):  # the old default, and pal.train's default now
        stamps = []
        t0 = time.perf_counter()
        for _ in make_loader(PalDataset(good, cfg), 0, workers=workers, pin=dev.type == 'cuda'): stamps.append(time.perf_counter())
        sec = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        res[f'loader_{workers}_workers_s_per_batch'] = sec
        log(f'  loader, {workers} workers, batch {B}: {sec:.2f} s/batch (GPU step {step_s:.3f} s): ratio {step_s / sec:.2f}'
            f' (startup {stamps[0] - t0:.1f} s)')
    res['gpu_step_s'] = step_s
    # pal-extract end to end on the same videos (float32, as it runs by default), two videos at once and `auto_jobs`
    import tempfile
    from pal.features import extract, random_encoder, save_encoder, auto_jobs
    with tempfile.TemporaryDirectory() as d:
        ecfg = TrainConfig(backbone=args.backbone, size=args.size)
        ck = save_encoder(Path(d) / 'enc.pt', ecfg, random_encoder(ecfg), kind='random')
        torch.backends.cudnn.benchmark = False  # as pal-extract runs (no autotuning per window shape: a video's last window is shorter)
        extract(ck, good[0].path, Path(d) / 'warm', device=str(dev), progress=False, log=None)  # receptive field, CUDA start-up
        both = Path(d) / 'videos'; both.mkdir()  # the 60 s and the 10 s videos: more videos than a few jobs
        for v in sorted(folder.parent.glob('*_240x320/*.mp4')): (both / f'{v.parent.name}_{v.name}').symlink_to(v.resolve())
        for jobs in sorted({2, auto_jobs(dev)}):
            t = time.perf_counter()
            man = extract(ck, both, Path(d) / f'j{jobs}', device=str(dev), progress=False, log=None, jobs=jobs)
            sec = time.perf_counter() - t
            rows = sum(v['rows'] for v in man['videos'].values())
            res[f'extract_{jobs}_jobs_clips_per_s'] = rows / sec
            log(f'  pal-extract end to end, {len(man["videos"])} videos, --jobs {jobs}: {rows / sec:.0f} clips/s ({sec:.1f} s)')
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', help='also write perf_gpu.json here (e.g. $OUT)')
    ap.add_argument('--backbone', default='r2plus1d_18')
    ap.add_argument('--size', type=int, default=112)
    ap.add_argument('--batch', type=int, help='samples per step (default: the largest power of 2 using <= 80%% of the card)')
    ap.add_argument('--max-batch', type=int, default=64)
    ap.add_argument('--steps', type=int, default=10, help='timed steps per variant')
    ap.add_argument('--no-compile', dest='compile', action='store_false', help='skip the torch.compile variant')
    ap.add_argument('--no-amp', dest='amp', action='store_false', help='float32 instead of bf16 autocast')
    ap.add_argument('--loader-batches', type=int, default=6)
    ap.add_argument('--cpu-smoke', action='store_true', help='tiny run on the CPU to check the script (numbers meaningless)')
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.cpu_smoke:
        dev = torch.device('cpu')
        args.size, args.steps, args.batch, args.compile, args.loader_batches = 32, 1, 2, False, 2
        args.amp, args.backbone = False, 'tiny'  # bf16 convolutions on a CPU are very slow
    else:
        if not torch.cuda.is_available(): sys.exit('gpu.py: no CUDA device (use --cpu-smoke to check the script on a CPU)')
        dev = torch.device('cuda')
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu (smoke test)'
    log(f'device {name}, torch {torch.__version__}')
    peak = matmul_peak(dev, torch.bfloat16 if dev.type == 'cuda' else torch.float32,
                       sizes=(4096, 8192, 16384) if dev.type == 'cuda' else (256,), iters=20 if dev.type == 'cuda' else 2)
    log(f'measured matmul peak: {peak / 1e12:.0f} TFLOP/s')
    tr = training(args, dev, peak)
    ex = extraction(args, dev, peak)
    best = max(tr['variants'], key=lambda r: r['clips_per_s'])
    today = next((r for r in tr['variants'] if 'today' in r['variant']), tr['variants'][0])
    data = data_side(args, dev, today['step_s'], tr['batch'])
    res = dict(device=name, torch=torch.__version__, backbone=args.backbone, size=args.size, amp=args.amp,
               peak_tflops=peak / 1e12, train_batch=tr['batch'], train_variant=best['variant'],
               train_clips_per_s=best['clips_per_s'], train_mfu=best['mfu'],
               train_mfu_as_pal_train_today=today['mfu'], train_clips_per_s_as_pal_train_today=today['clips_per_s'],
               extract_clips_per_s=max(r['clips_per_s'] for r in ex['batches']),
               extract_mfu=max(r['mfu'] for r in ex['batches']),
               training=tr, extraction=ex, data=data, seconds=time.perf_counter() - t0,
               date=time.strftime('%Y-%m-%d %H:%M %Z'))
    text = json.dumps(res, indent=1)
    if not args.cpu_smoke:
        (ROOT / 'benchmarks' / 'results').mkdir(exist_ok=True)
        (ROOT / 'benchmarks' / 'results' / 'perf_gpu.json').write_text(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / ('perf_gpu_smoke.json' if args.cpu_smoke else 'perf_gpu.json')).write_text(text)
    log(f"\n{name}: training {res['train_clips_per_s']:.0f} clips/s ({res['train_variant']}), MFU {100 * res['train_mfu']:.0f}% "
        f"(as pal.train today: {100 * res['train_mfu_as_pal_train_today']:.0f}%); extraction {res['extract_clips_per_s']:.0f} clips/s, "
        f"MFU {100 * res['extract_mfu']:.0f}%; peak {res['peak_tflops']:.0f} TFLOP/s; {res['seconds']:.0f} s")


if __name__ == '__main__':
    main()
