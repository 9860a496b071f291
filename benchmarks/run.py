"""Run every CPU benchmark of issue 7 and write BENCHMARKS.md (and benchmarks/results/perf_cpu.json).

    python benchmarks/run.py            # everything, about 9 minutes on a busy 2-core CPU
    python benchmarks/run.py --quick    # fewer repetitions and sizes, about 2 minutes
    python benchmarks/run.py --only decode step

The first run also writes the benchmark videos into benchmarks/.cache/ (about a minute, once).
GPU numbers come from `python benchmarks/gpu.py` on a machine with a GPU, which writes
benchmarks/results/perf_gpu.json; this script puts them in the table when that file exists.
"""
from __future__ import annotations
import argparse, json, sys, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import ROOT, machine, ms, setup_torch, bench_videos  # noqa: E402

PARTS = ('decode', 'frame_table', 'synthesis', 'step', 'extraction')
RESULTS = HERE / 'results'


def _x(r: float) -> str: return f'{r:.2f}x' if r < 10 else f'{r:.1f}x'
def _yes(ok: bool) -> str: return 'yes' if ok else '**no**'


def _e2e(g: dict) -> str:
    "`pal-extract` end to end on the GPU machine, where measured."
    d = g.get('data') or {}
    runs = sorted((int(k.split('_')[1]), v) for k, v in d.items() if k.startswith('extract_') and k.endswith('_jobs_clips_per_s'))
    return ''.join(f"; `pal-extract` --jobs {j}: {v:.0f} clips/s" for j, v in runs)


def _iqr(v: dict) -> str:
    "The middle half of a step row's per-round ratios, where measured."
    if 'pal_over_bare_iqr' not in v: return ''
    (a, b), (c, d) = v['pal_over_video_iqr'], v['pal_over_bare_iqr']
    return f"; middle half of the {v['reps']} rounds: PAL/video {a:.2f}-{b:.2f}, PAL/bare {c:.2f}-{d:.2f}"


def _extraction(R: dict) -> tuple[dict, dict]:
    "The extraction results of one video per size, and those of a folder per size."
    e = R.get('extraction') or {}
    return ({k: v for k, v in e.items() if not str(k).startswith('folder')},
            {k.removeprefix('folder'): v for k, v in e.items() if str(k).startswith('folder')})


def table_rows(R: dict) -> list[str]:
    "The results table, one row per measurement."
    rows = []
    d = R.get('decode')
    if d:
        u = d['untrimmed']
        rows.append(f"| 1 | Decode, 60 s videos | frames of one PAL sample ({u['needed']:.0f} of 3 x {u['frames']}) sparse "
                    f"**{ms(u['sparse'])}** vs the 3 videos whole **{ms(u['whole'])}** (CPU {ms(u['sparse_cpu'])} vs {ms(u['whole_cpu'])}) "
                    f"| {_x(u['ratio'])} (CPU {_x(u['ratio_cpu'])}) | >= 10x | {_yes(u['ratio'] >= 10)} |")
        if 'trimmed' in d:
            t = d['trimmed']
            rows.append(f"| 1b | Decode, 10 s videos | sparse {ms(t['sparse'])} vs whole {ms(t['whole'])} ({t['needed']:.0f} of 3 x {t['frames']} frames) "
                        f"| {_x(t['ratio'])} | (>= 10x) | n/a: see note 1 |")
    ft = R.get('frame_table')
    if ft:
        t, sp = ft['table'], ft['sparse']
        rows.append(f"| 1c | Frame table of a 60 s video ({t['frames']} frames): the one full decode that defines frame k and its time "
                    f"(issue 13), done once per file and kept on disk | build **{ms(t['build'])}** (CPU {ms(t['build_cpu'])}, "
                    f"{t['decode_fps']:.0f} frames/s) vs reading it back **{ms(t['load'])}** (a reader opened from disk {ms(t['open'])}, "
                    f"entry {t['entry_bytes'] / 1024:.0f} KiB) | {_x(t['build_over_load'])} | paid once per file | yes |")
        rows.append(f"| 1d | Sparse read of one PAL sample (112 px), exact reader with checked restarts vs the reader before issue 13 | "
                    f"after **{ms(sp['after'])}** vs before **{ms(sp['before'])}**; the 3 videos whole {ms(sp['whole'])} | "
                    f"{sp['after_over_before']:.2f} (whole/sparse {_x(sp['whole_over_after'])}) | about 1 | "
                    f"{_yes(sp['after_over_before'] <= 1.15)} |")
    s = R.get('synthesis')
    if s:
        for size, p in s['per_sample'].items():
            parts = ', '.join(f"{k.split()[1]} {ms(v)}" for k, v in p['parts'].items() if k.startswith('after'))
            rows.append(f"| 2a | Synthesis, one sample, {size} px (decoded at {p['decode_hw'][0]}x{p['decode_hw'][1]}) | "
                        f"**{ms(p['after'])}** per sample and worker ({parts}); CPU {ms(p['after_cpu'])} | | | |")
        for size, l in s['loader'].items():
            rows.append(f"| 2b | Loader vs step, {size} px, batch 6, decoded per sample (`cache_mb=0`) | loader ({l['workers']} workers) **{ms(l['loader'])}** per batch vs "
                        f"training step **{ms(l['step'])}** (make_inputs {ms(l['make_inputs'])} included) | {_x(l['ratio'])} | >= 1.5x | "
                        f"{_yes(l['ratio'] >= 1.5)}{'' if l['ratio'] >= 1.5 else ': see note 2'} |")
        for size, c in s.get('cached', {}).items():
            if not c['cached']:
                rows.append(f"| 2b | Loader vs step, {size} px, default `cache_mb` ({c['cache_mb']} MiB) | the videos do not fit: "
                            "decoded per sample as in the row above | | | |"); continue
            rows.append(f"| 2b | Loader vs step, {size} px, batch 6, default `cache_mb` ({c['cache_mb']} MiB: the 3 videos take "
                        f"{c['cached_mb']:.0f} MiB, decoded once in {c['decode_once']:.1f} s) | loader (0 workers, as `fit` runs it) "
                        f"**{ms(c['loader'])}** per batch vs training step **{ms(c['step'])}**; `fit` log: median `data_time` "
                        f"{ms(c['fit']['data_time'])} of `step_time` {ms(c['fit']['step_time'])} | {_x(c['ratio'])} | >= 1.5x | "
                        f"{_yes(c['ratio'] >= 1.5)} |")
        for size, f in s['fit'].items():
            rows.append(f"| 2c | `fit` log, {size} px, {f['steps']} steps, videos not cached | median `data_time` {ms(f['data_time'])} "
                        f"of `step_time` {ms(f['step_time'])} | {100 * f['wait_fraction']:.0f}% of each step waits for data | | |")
    st = R.get('step')
    if st:
        for size, v in st.items():
            rows.append(f"| 3 | Step, tiny, {size} px, batch {v['B']} (x2 videos x {v['T']} frames) | PAL **{ms(v['pal'])}**, video-level "
                        f"**{ms(v['video'])}**, bare backbone fwd+bwd **{ms(v['bare'])}** | PAL/video {v['pal_over_video']:.2f}, "
                        f"PAL/bare {v['pal_over_bare']:.2f} (CPU {v['pal_over_video_cpu']:.2f}, {v['pal_over_bare_cpu']:.2f}){_iqr(v)} | "
                        f"<= 1.10, <= 1.15 | {_yes(v['pal_over_video'] <= 1.10 and v['pal_over_bare'] <= 1.15)} |")
    e, ef = _extraction(R)
    if e:
        for size, v in e.items():
            rows.append(f"| 4 | Extraction, tiny, {size} px, one 60 s video ({v['rows']} clips) | `pal-extract` **{v['clips_per_s']:.0f} clips/s** "
                        f"vs bare forward **{v['bare_clips_per_s']:.0f} clips/s** | {v['ratio']:.2f} (CPU {v['ratio_cpu']:.2f}) | >= 0.9 | "
                        f"{_yes(v['ratio'] >= 0.9)}{'' if v['ratio'] >= 0.9 else ': see note 3'} |")
        for size, v in e.items():
            if 'reach' not in v: continue  # results from before change E
            slower = 'decode + preprocess alone' if v['bound'] == 'decode' else 'the bare forward'
            rows.append(f"| 4b | Extraction vs its slower half, {size} px | `pal-extract` **{v['clips_per_s']:.0f} clips/s** vs decode + preprocess "
                        f"alone (no encoder) **{v['decode_clips_per_s']:.0f} clips/s** and bare forward {v['bare_clips_per_s']:.0f} clips/s; "
                        f"the prefetch thread gives {v['prefetch_speedup']:.2f}x (change E) | {v['reach']:.2f} of {slower} | >= 0.9 | "
                        f"{_yes(v['reach'] >= 0.9)}: see note 3 |")
    for size, v in ef.items():
        d, j1 = v['default'], v['jobs1']
        met = ('yes with the default `--jobs 2` (where two forwards can run at once)' if d['ratio'] >= 0.9 else '**no**')
        rows.append(f"| 4c | Extraction of a folder, tiny, {size} px, {v['videos']} videos of 60 s ({v['rows']} clips) | `pal-extract` "
                    f"(`--jobs {v['jobs']}`, the default on the CPU) **{d['clips_per_s']:.0f} clips/s**, `--jobs 1` {j1['clips_per_s']:.0f} clips/s, "
                    f"vs bare forward **{v['bare_clips_per_s']:.0f} clips/s** on one core and {v['bare2_clips_per_s']:.0f} clips/s on both | "
                    f"{d['ratio']:.2f} of the forward on one core (`--jobs 1` {j1['ratio']:.2f}); {d['ratio2']:.2f} of the forward on both | "
                    f">= 0.9 | {met}: see note 3 |")
    g = R.get('gpu')
    if g:
        rows.append(f"| 5 | GPU, r2plus1d_18, 112 px, bf16, {g['device']} | training {g['train_clips_per_s']:.0f} clips/s, "
                    f"extraction {g['extract_clips_per_s']:.0f} clips/s (encoder alone){_e2e(g)}, MFU {100 * g['train_mfu']:.0f}% (peak {g['peak_tflops']:.0f} TFLOP/s measured) "
                    f"| {100 * g['train_mfu']:.0f}% | >= 40% MFU | {_yes(g['train_mfu'] >= 0.4)} |")
    else:
        rows.append('| 5 | GPU: r2plus1d_18, 112 px, bf16, channels_last_3d, MFU | not measured: no GPU lent to this task. '
                    'Run `python benchmarks/gpu.py` on a GPU machine (< 5 min) | | >= 40% MFU | not measured |')
    return rows


def optimisation_rows(R: dict) -> list[str]:
    "Before/after of each change, measured in the same run."
    rows = []
    d = R.get('decode', {})
    for kind, v in d.get('decoder', {}).items():
        rows.append(f"| A | `pal.video`: `VideoReader` reads every file with PyAV by a pts table (from the packets where `probe` trusts them; "
                    f"cached per file) instead of decord's seeking (which re-scans the file at every open) | frames of one sample, "
                    f"{'60' if kind == 'untrimmed' else '10'} s videos | {ms(v['before'])} (CPU {ms(v['before_cpu'])}) | {ms(v['after'])} "
                    f"(CPU {ms(v['after_cpu'])}) | {_x(v['speedup'])} (CPU {_x(v['speedup_cpu'])}) |")
    if 'scaler' in d:
        v = d['scaler']
        rows.append(f"| B | `pal.video`: one reused `VideoReformatter` per read instead of a new scaler per frame | frames of one sample, "
                    f"60 s videos, PyAV path | {ms(v['before'])} (CPU {ms(v['before_cpu'])}) | {ms(v['after'])} (CPU {ms(v['after_cpu'])}) "
                    f"| {_x(v['speedup'])} (CPU {_x(v['speedup_cpu'])}) |")
    s = R.get('synthesis', {})
    rows.append("| D | `pal.video`: `read_exact` decodes through gaps of up to 16 frames instead of reopening the file and seeking at "
                "every keyframe it passes; `VideoReader.get` returns frames already in order without a gather copy | measured "
                "together with A-C in the rows below | | | |")
    for size, p in s.get('per_sample', {}).items():
        rows.append(f"| C | `pal.paste.apply_augment`: whole-pixel crop as a uint8 slice, one `F.interpolate` per video (uint8 kernel on the CPU), "
                    f"colour jitter in place and skipped where a draw changes nothing, instead of a float copy of whole frames and one "
                    f"`grid_sample` | augment a batch of 6 samples, {size} px | {ms(p['augment_batch_before'])} (CPU {ms(p['augment_batch_before_cpu'])}) "
                    f"| {ms(p['augment_batch_after'])} (CPU {ms(p['augment_batch_after_cpu'])}) | {_x(p['augment_speedup'])} |")
        rows.append(f"| A-D | all of the above | one sample: plan + decode + paste + augment, {size} px | {ms(p['before'])} (CPU {ms(p['before_cpu'])}) "
                    f"| {ms(p['after'])} (CPU {ms(p['after_cpu'])}) | {_x(p['speedup'])} (CPU {_x(p['speedup_cpu'])}) |")
    for size, l in s.get('loader', {}).items():
        rows.append(f"| A-D | all of the above | loader, {l['workers']} workers, {size} px, s per batch | {ms(l['loader_before'])} | {ms(l['loader'])} "
                    f"| {_x(l['loader_before'] / l['loader'])} |")
    for size, v in _extraction(R)[0].items():
        if 'noprefetch' not in v:  # results from before change E was applied
            rows.append(f"| A-D | all of the above | `pal-extract` of one 60 s video, {size} px | {ms(v['before'])} "
                        f"(CPU {ms(v['before_cpu'])}) | {ms(v['extract'])} (CPU {ms(v['extract_cpu'])}) | {_x(v['speedup'])} |")
            continue
        rows.append(f"| A-D | all of the above | `pal-extract` of one 60 s video, {size} px, without the prefetch thread{'' if 'flush' not in v else ' and with the flush last window'} | {ms(v['before'])} "
                    f"(CPU {ms(v['before_cpu'])}) | {ms(v['noprefetch'])} (CPU {ms(v['noprefetch_cpu'])}) | {_x(v['speedup_ad'])} |")
        rows.append(f"| E | `pal.features.extract_features`: decode + preprocess the next window in a background thread while the "
                    f"encoder runs on this one (`prefetch=True`), one window per forward (`batch=1`, so that a 60 s video is four "
                    f"forwards to overlap, not one; both are the defaults; same features: {v['same_features']}) | `pal-extract` of one 60 s video, {size} px | "
                    f"{ms(v['noprefetch'])} (CPU {ms(v['noprefetch_cpu'])}) | {ms(v.get('flush', v['extract']))} (CPU {ms(v.get('flush_cpu', v['extract_cpu']))}) | {_x(v['prefetch_speedup'])} |")
        if 'flush' in v:
            rows.append(f"| G | `pal.features.window_plan`: the last window of a video runs from its left margin to the end ({v['forwarded']} "
                        f"clips through the encoder for {v['rows']} rows) instead of a full window flush with the end ({v['forwarded_flush']} "
                        f"clips) | `pal-extract` of one 60 s video, {size} px | {ms(v['flush'])} (CPU {ms(v['flush_cpu'])}) | {ms(v['extract'])} "
                        f"(CPU {ms(v['extract_cpu'])}) | {_x(v['short_last_speedup'])} |")
        rows.append(f"| A-{'G' if 'flush' in v else 'E'} | all of the above | `pal-extract` of one 60 s video, {size} px | {ms(v['before'])} | {ms(v['extract'])} "
                    f"| {_x(v['speedup'])} |")
    return rows


NOTES = """\
**Note 1 (decode, short videos).** One PAL sample reads a window of 128 frames (64 output frames at
frame_stride 2) from each of its three videos, plus the frames from the keyframe before each window.
A 10 s video has 300 frames, so sparse decoding can only save about 300/150 per video: the 10x target
is about untrimmed videos (ActivityNet-like, a minute and more), where it holds (row 1).

**Note 2 (loader vs step on this CPU).** There are two regimes. With the default `cache_mb` (512 MiB)
`fit` decodes every video once into memory at the decode size when they fit, and then cuts each batch
from memory: that is the demo's and the toy benchmark's case, and the rows marked "default `cache_mb`"
(the target is met by a wide margin, and `data_time` is a few percent of a step). When the videos do
not fit (many or long videos, large decode sizes), every sample is decoded from the file by the
loader's workers, the rows marked "2 workers" (measured with `cache_mb=0`).
Decoding 240x320 H.264 costs about 0.3-0.5 ms per frame and
a sample decodes about 420 frames (the wanted 123 plus every second frame in between and the run-up
from the keyframe), so a 6-sample batch costs about a second of CPU whatever the training resolution.
The tiny backbone at 32 px trains a step in well under a second on one core, and the loader's
workers share the same 2 cores with the training process (and with the other jobs on this machine):
there are no spare cores to decode ahead. Where the step is heavier (112 px) the loader is ahead. On
a GPU machine the same loader runs on many cores: `benchmarks/gpu.py` measures the loader with the
default workers against the GPU step there. Row 2c shows what the model sees: the `fit` log's
`data_time` (waiting for the batch plus `make_inputs`) against `step_time`.

"""


def note2(R: dict) -> str:
    "Note 2's measured bound for the loader rows that miss the target."
    s = R.get('synthesis') or {}
    out = []
    for size, l in s.get('loader', {}).items():
        if l['ratio'] >= 1.5: continue
        out.append(f"At {size} px the loader measured alone, its {l['workers']} workers (one per core) with nothing else of ours running, "
                   f"delivers a batch every {ms(l['loader'])}; 1.5x the step rate would need one every "
                   f"{ms(l['step'] / 1.5)}, and during training the step takes one of the two cores. That is why "
                   "`fit` caches the videos when they fit (the default).")
    return ' '.join(out)


def note3(R: dict) -> str:
    "Note 3, with the numbers of the extraction rows."
    head = ("**Note 3 (extraction on this CPU).** `pal-extract` decodes every frame of a video (frame_stride 2 keeps "
            "every second one, but the decoder must go through all of them) and preprocesses the kept ones. Since change E "
            "the next window decodes in a background thread while the encoder runs (PyAV and torch release the GIL, so the "
            "two use the two cores), so a video takes at best as long as the slower half: decoding and preprocessing alone "
            "(row 4b, measured without the encoder) or the bare forward. Row 4's target can only be met where the forward "
            "is the slower half.")
    e, ef = _extraction(R)
    items = []
    for size, v in e.items():
        if 'reach' not in v: continue
        one = (f"**{size} px, one video.** Decoding alone runs at {v['decode_clips_per_s']:.0f} clips/s and the bare forward at "
               f"{v['bare_clips_per_s']:.0f} clips/s, so {'decoding' if v['bound'] == 'decode' else 'the forward'} is the slower half. "
               f"`pal-extract` runs at {v['clips_per_s']:.0f} clips/s, {v['reach']:.2f} of the slower half "
               f"(the prefetch thread gives {v['prefetch_speedup']:.2f}x, change E). "
               f"`extract_features` alone, without loading the checkpoint, probing the receptive field or writing files, "
               f"runs at {v['core_clips_per_s']:.0f} clips/s.")
        if v['bound'] == 'decode':
            one += (f" Even with both cores decoding (two videos at once) decoding gives at most 2 x {v['decode_clips_per_s']:.0f} = "
                    f"{2 * v['decode_clips_per_s']:.0f} clips/s, against the {0.9 * v['bare_clips_per_s']:.0f} clips/s that 0.9 of the "
                    "bare forward needs: not reachable on this machine.")
        elif v.get('windows', 1) > 1:
            per_clip = 1 / v['bare_clips_per_s']  # bare forward seconds per clip
            fwd, ref = per_clip * v.get('forwarded', v['rows']), per_clip * v['rows']
            first = v['decode'] * min(v['window'], v['rows']) / v.get('forwarded', v['rows'])  # the first window's share of the decoding
            one += (f" The windows overlap by the receptive field's margin, so `pal-extract` runs {v.get('forwarded', v['rows'])} clips "
                    f"through the encoder for the video's {v['rows']} rows, and the first of its {v['windows']} windows must be decoded "
                    f"before the first forward can start. A perfect overlap therefore takes about the forward ({ms(fwd)}) plus the first "
                    f"window's decoding ({ms(first)}), against {ms(ref)} for the bare forward on {v['rows']} clips: about "
                    f"{ref / (fwd + first):.2f} for one video at these speeds (from medians measured separately, so one run can land a "
                    "few percent either side), short of 0.9. Over a folder the next video's first window decodes while "
                    "this one runs (row 4c).")
        items.append(one)
    for size, v in ef.items():
        d = v['default']
        cap = v['rows'] / v['forwarded'] if 'forwarded' in v else None
        items.append(f"**{size} px, a folder (row 4c).** With two videos at once (`--jobs 2`, the default on the CPU) their "
                     f"work keeps both cores busy: {d['ratio']:.2f} of the forward on one core "
                     f"({v['jobs1']['ratio']:.2f} with `--jobs 1`)."
                     + (f" The encoder runs {v['forwarded']} clips for {v['rows']} rows (the windows' margins), so with one forward at "
                        f"a time (`--jobs 1`) even a perfectly hidden decoding gives at most {cap:.2f} of the forward on one core; it gets "
                        f"{v['jobs1']['ratio']:.2f}. With `--jobs 2` two forwards can also run at once, on both cores." if cap else '')
                     + f" `pal-extract` spends {1e3 * d['cpu_per_clip']:.1f} ms of CPU per row, the bare forward "
                     f"{1e3 * v['bare_cpu_per_clip']:.1f} ms per clip; decoding and preprocessing take most of the difference, and a "
                     f"forward that has both cores to itself does not pay them: against it `pal-extract` reaches {d['ratio2']:.2f}.")
    tail = ("This machine has 2 cores and shares them with other jobs (load average in the header), so the core the thread "
            "needs is often busy. On a GPU machine the encoder runs on the GPU and decoding on the CPU cores, and row 4's "
            "target means that the GPU is never left waiting (`gpu.py` times the forward and `pal-extract` there).")
    return '\n'.join([head, '', *[f'- {i}' for i in items], '', tail])


PROPOSALS = """\
## Applied for the GPU (not measurable on this CPU)

- `pal.train`: `TrainConfig.channels_last` (`'auto'`: on CUDA only; `'on'`, `'off'`; may change on
  `--resume`) puts the model and its inputs in `torch.channels_last_3d` (same values; a test checks
  two CPU steps give the same losses either way). `gpu.py` times both layouts.
- `pal.train`: with `workers=-1` (the default) on CUDA the loader takes `max(1, min(16, CPUs - 1))`
  workers instead of `min(4, CPUs)`: a sample costs about 0.1-0.3 s of CPU to decode at 1 thread (row 2a;
  it varies with the machine's load from run to run), so a batch of 32 needs about 3-8 s of CPU. `gpu.py` measures the loader with the old default and all workers.
- `pal.features.extract_features` on CUDA: frames decoded into pinned host memory (in the prefetch
  thread of change E), copied with `non_blocking=True`, preprocessed on the GPU, and fed to the
  encoder in `channels_last_3d` (`extract` converts the encoder once). No bf16 by default.
- `pal.features.extract` on CUDA: `jobs=None` (the default, `pal.features.auto_jobs`) takes as many videos
  at once as there are CPU cores but one, at most 16, instead of 2: a video decodes on one core at about 80
  clips/s at 112 px (row 4b), far below what a GPU encodes. On the CPU it stays 2. `gpu.py` times
  `pal-extract` end to end with `--jobs 2` and with the default.

## Not applied yet, and why

`pal.train` (fit, data loading):
- `fit` reads the loss and statistics to the host (`.tolist()`, `math.isfinite`) on every step, before
  `backward`: on a GPU that is a host sync per step. Keeping them on the device and reading them every
  k steps means the NaN guard (which today skips `backward` and stops before a non-finite loss reaches
  the weights) would act a few steps late, so it needs a different guard (e.g. a device-side skip of
  the optimizer step). Its gain shows only on a GPU, which this task did not have: `gpu.py` times the
  step with and without the sync, so the change can be decided on a measurement.
- On the CPU, `make_inputs` (paste and augment, row 2b: about 2 % of a step at 32 px, 13 % at 112 px)
  runs in the training process between steps; doing it in the workers (in `collate`) would overlap it
  with training when the videos are decoded per sample. With the default cache the loader runs in the
  training process anyway (0 workers), so this would only help the uncached case.

`pal.features` (extraction):
- On CUDA: bf16 autocast in `extract_features` (`gpu.py` extraction row times it); features would then
  differ from the float32 ones by the rounding of bf16, so it should be an option, not the default.

Shared docs: DESIGN.md and STYLE.md name decord as the decoder; `VideoReader` now reads with PyAV by
default (decord stays as `mode='decord'`), see change A.
"""


GPU_HOWTO = """\
## GPU (row 5): how to run it

`benchmarks/gpu.py` is one prepared script (about 3-5 minutes on an H100 or H200): it measures the
bf16 matmul peak of the card, sizes the batch to about 80% of its memory, times the PAL training step
of r2plus1d_18 at 112 px under bf16 autocast in four variants (NCDHW, as `pal.train` ran before its
`channels_last` option, `channels_last_3d` as it runs now on CUDA, the same without the per-step host sync of the log, and `torch.compile`), counts
the step's FLOPs with `torch.utils.flop_counter.FlopCounterMode` (MFU = counted FLOPs x steps/s / the
measured peak), times the encoder forward on `pal-extract`'s 32-clip windows, and, where PyAV and
decord can be imported, the data loader (default and all workers) against the GPU step. The GPU
machines have torch but not PyAV or decord; carry them as wheels:

```
echo /.whl/ >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
  --platform manylinux2010_x86_64 -d .whl av==18.1.0 decord==0.6.0
python benchmarks/run.py --quick   # writes the benchmark videos into benchmarks/.cache/ if missing
```

then run, with `carry: [".whl", "benchmarks/.cache"]` and `timeout_s: 540`:

```
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \\
  && export PYTHONPATH=/tmp/site; PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --out $OUT
```

copy the returned `perf_gpu.json` to `benchmarks/results/` and run `python benchmarks/run.py --render`.
`python benchmarks/gpu.py --cpu-smoke` checks the script on a CPU in 20 s (numbers meaningless)."""


def write_markdown(R: dict, path: Path, argv: list[str], seconds: float):
    m = R['machine']
    cmd = 'python benchmarks/run.py' + (' ' + ' '.join(argv) if argv else '')
    lines = [
        '# Benchmarks', '',
        'Performance of the pal pipeline (issue 7). Generated by `benchmarks/run.py`; do not edit by hand.', '',
        f"- **Command:** `{cmd}` ({seconds / 60:.1f} min)",
        f"- **Date:** {m['date']}, commit {m['commit']}",
        f"- **Machine:** {m['cpu']}, {m['cores']} cores, shared with other jobs (load average at the start "
        f"{m['load'][0]:.1f}); no GPU. Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, "
        f"PyAV {m['av']}, decord {m['decord']}. `torch.set_num_threads({m['threads']})` in every process.",
        *[f"- **Measured separately:** part `{part}` with `python benchmarks/run.py {' '.join(p['argv'])}`, {p['date']}, "
          f"commit {p['commit']}, {p['cpu']}, load average at the start {p['load'][0]:.1f}." for part, p in R.get('partial', {}).items()],
        '- **Method:** every row compares two (or three) things in the same run, interleaved (A B, B A, A B ...), '
        'after one untimed round; times are medians of the repetitions, ratios are medians of the per-round ratios (steadier '
        'when the load drifts). Wall-clock unless marked CPU; process CPU times are given beside them because on a loaded '
        'machine wall time includes waiting for a core. When the load changes during a run, the medians of two things can differ '
        'more than their per-round ratio (row 3 gives the middle half of its per-round ratios).',
        '- **Videos:** generated once into `benchmarks/.cache/` by `benchmarks/common.py`: 240x320 H.264 '
        '(B-frames, a keyframe every 2 s), 30 fps, 60 s ("untrimmed", ActivityNet-like) and 10 s ("trimmed", '
        'Kinetics-like), procedural scenes cut into shifted, mirrored and reversed 2 s shots. Training sizes as '
        '`pal.train.TrainConfig`: 32 px (the default, decoded at 37x49) and 112 px (decoded at 128x171).',
        '', '## Results', '',
        '| # | benchmark | measured | ratio | target | met |', '|---|---|---|---|---|---|',
        *table_rows(R), '', NOTES.rstrip() + ' ' + note2(R), '', note3(R), '', '## Optimisations: before and after, in the same run', '',
        '"Before" is the code at commit f8b7275, kept in `benchmarks/baseline.py` and switched in by '
        '`baseline.before()` (so data-loader workers, forked inside it, run the old code too).', '',
        '| | change | measured on | before | after | speedup |', '|---|---|---|---|---|---|',
        *optimisation_rows(R), '',
        'Looked at and left alone: pasting (`paste_batch`) is one gather, about 1 ms per sample; `sample_plan` about '
        '1 ms; the PAL head and loss add a few percent to the backbone (row 3); no frame is decoded twice '
        '(`load_bank` asks each video once for its unique frames).', '',
        'F. `pal.features.extract`: the videos of a folder go through `jobs` at a time in threads (`--jobs`, default 2 on the CPU), '
        'because a short video is a single window and the prefetch thread of change E has nothing to overlap within it. '
        'Measured separately with `python benchmarks/folder_extraction.py` (48 toy-benchmark videos of 10-20 s, interleaved, '
        'same features): one at a time 2.81 s, two at a time 1.92 s, **1.47x** (2026-11-26, this machine, load about 0.9).', '',
    ]
    lines += [PROPOSALS, GPU_HOWTO, '']
    if R.get('gpu'):
        lines += ['Last GPU run (`benchmarks/results/perf_gpu.json`):', '', '```', json.dumps(R['gpu'], indent=1), '```', '']
    path.write_text('\n'.join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='fewer repetitions and sizes (about 2 minutes)')
    ap.add_argument('--only', nargs='+', choices=PARTS, help='run only these parts (others are kept from the last results file)')
    ap.add_argument('--out', default=str(ROOT / 'BENCHMARKS.md'), help='markdown file to write (default: BENCHMARKS.md)')
    ap.add_argument('--render', action='store_true', help='measure nothing: rewrite the markdown from the saved results '
                    '(e.g. after copying a GPU run\'s perf_gpu.json into benchmarks/results/)')
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    setup_torch()
    RESULTS.mkdir(exist_ok=True)
    res_file = RESULTS / ('perf_cpu_quick.json' if args.quick else 'perf_cpu.json')
    R = json.loads(res_file.read_text()) if (args.only or args.render) and res_file.exists() else {}
    if args.render:
        if not R: sys.exit(f'run.py: {res_file} does not exist; run the benchmarks first')
        gpu = RESULTS / 'perf_gpu.json'
        R['gpu'] = json.loads(gpu.read_text()) if gpu.exists() else None
        write_markdown(R, Path(args.out), R.get('argv', []), R.get('seconds', 0))
        return print(f'wrote {args.out} from {res_file}')
    if args.only and 'machine' in R:  # a partial run: the header keeps the full run's facts, the parts get their own
        R.setdefault('partial', {}).update({part: dict(machine(), argv=argv) for part in args.only})
    else: R['machine'], R['partial'] = machine(), {}
    t0 = time.perf_counter()
    for kind in ('untrimmed', 'trimmed'): bench_videos(kind)
    for part in args.only or PARTS:
        print(f'{part} ...', flush=True)
        t = time.perf_counter()
        R[part] = __import__(part).run(quick=args.quick)
        print(f'{part}: {time.perf_counter() - t:.0f} s', flush=True)
    gpu = RESULTS / 'perf_gpu.json'
    R['gpu'] = json.loads(gpu.read_text()) if gpu.exists() else None
    if not (args.only and R.get('partial')): R['argv'], R['seconds'] = argv, time.perf_counter() - t0
    res_file.write_text(json.dumps(R, indent=1, default=str))
    write_markdown(R, Path(args.out), argv, R['seconds'])
    print(f'wrote {args.out} and {res_file}')


if __name__ == '__main__':
    main()
