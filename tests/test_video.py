"Tests for pal.video: exact frames and true times against a sequential PyAV decode, on the samples and on real-world traps."
import contextlib, io, json, os, subprocess, sys, warnings
from pathlib import Path

import av
import decord
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import pal.video as V
from pal.samples import sample_dir, read_index_code, render_scene, write_video, write_overcounted_mp4, make_hard_cases
from pal.video import (VideoError, VideoWarning, VideoReader, VIDEO_EXTS, list_videos, probe, frame_table, FrameTable,
                       VideoInfo, check_video, VideoCheck, probe_cli, cache_dir, read_exact, clip_frame_indices, clip_span,
                       window_starts, clamp_indices)

SAMPLES = sample_dir()
MANIFEST = json.loads((SAMPLES / 'manifest.json').read_text())['videos']
NAMES = [e['file'] for e in MANIFEST]
DAMAGED = next(e['file'] for e in MANIFEST if e['damaged'])


@pytest.fixture(scope='module', autouse=True)
def cache(tmp_path_factory):
    "Frame tables of this module go to a scratch cache folder, never the user's."
    d = tmp_path_factory.mktemp('pal_cache')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('PAL_CACHE_DIR', str(d))
        yield d


@pytest.fixture(scope='module')
def hard(tmp_path_factory, cache):
    "The real-world traps of `make_hard_cases`: (folder, {file: what it must read as})."
    d = tmp_path_factory.mktemp('hard')
    return d, {e['file']: e for e in make_hard_cases(d)}

HARD = ['packed_bframes.avi', 'edit_list.mp4', 'vfr.mp4', 'vfr_header.avi', 'cut.avi', 'cut_faststart.mp4', 'cut.mkv',
        'rotated.mp4', 'pts_eq_dts.mp4', 'overcounted.mp4']


def sequential_decode(path, rotation=0) -> np.ndarray:
    "The reference: every frame of a plain forward PyAV decode of the whole packets, turned as a player shows it, uint8 [T, H, W, 3]."
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        packets = [q for q in c.demux(s) if q.size and not q.is_corrupt]  # a cut file's partial packet is not a frame
        frames = [f for q in packets for f in s.decode(q)] + s.decode(None)
    return np.stack([np.rot90(f.to_ndarray(format='rgb24'), rotation // 90) for f in frames])


def quiet_reader(*a, **k):
    "A `VideoReader`, its warnings swallowed (tested where they matter)."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', VideoWarning)
        return VideoReader(*a, **k)


@pytest.fixture(scope='module')
def reference():
    return {name: sequential_decode(SAMPLES / name) for name in NAMES}


# -- exact frames on the samples --------------------------------------------------------------

@pytest.mark.parametrize('name', NAMES)
def test_reference_decode_carries_index_code(name, reference):
    "The reference decode itself shows frame k's code k (so the comparisons below are meaningful)."
    ref = reference[name]
    assert [read_index_code(f) for f in ref] == list(range(len(ref)))


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('mode', ['auto', 'decord'])
def test_get_is_exact_in_any_order(name, mode, reference):
    ref = reference[name]
    r = quiet_reader(SAMPLES / name, mode=mode)
    assert r.mode == ('exact' if mode == 'auto' or name == DAMAGED else 'decord')  # decord only where it was checked right
    assert r.num_frames == len(ref)
    g = torch.Generator().manual_seed(NAMES.index(name))
    orders = [torch.randint(0, len(ref), (12,), generator=g) for _ in range(4)]  # random, with repeats
    orders += [torch.arange(len(ref) - 1, -1, -1), torch.tensor([len(ref) - 1, 0, len(ref) // 2, 1, len(ref) - 2])]
    with r:  # one held reader: every read follows earlier ones
        for idx in orders:
            out = r.get(idx)
            assert out.dtype == torch.uint8 and out.shape == (len(idx), *ref.shape[1:])
            assert np.array_equal(out.numpy(), ref[idx.numpy()])
    for idx in orders[:2]:  # fresh handle per call
        assert np.array_equal(r.get(idx.tolist()).numpy(), ref[idx.numpy()])


def test_every_single_frame_of_damaged_file(reference):
    "Frame by frame, after having read the end: the case decord gets wrong."
    ref = reference[DAMAGED]
    with VideoReader(SAMPLES / DAMAGED) as r:
        r.get([len(ref) - 1])
        got = [read_index_code(r.get([k])[0]) for k in range(len(ref))]
    assert got == list(range(len(ref)))


def test_damaged_sample_fools_decord_and_the_reader_knows(reference):
    "The damaged sample reproduces the decord bug; the reader does not restart on it and refuses decord mode, with a warning."
    vr = decord.VideoReader(str(SAMPLES / DAMAGED), num_threads=1)
    assert [read_index_code(f) for f in vr.get_batch(list(range(10))).asnumpy()] == list(range(10))  # forward: right
    vr.get_batch([100])
    assert [read_index_code(f) for f in vr.get_batch([40, 5]).asnumpy()] != [40, 5]
    info = probe(SAMPLES / DAMAGED)
    assert not info.seekable and 'out of order' in info.why and info.times_from == 'sorted pts'
    with pytest.warns(VideoWarning, match='not read with decord'):
        assert VideoReader(SAMPLES / DAMAGED, mode='decord').mode == 'exact'


def _labels(path):
    "Labels and keyframe flags of a sequential decode (the same packets the reader uses)."
    with av.open(str(path)) as c:
        frames = list(V._decoded(c, c.streams.video[0]))
    return tuple(f.pts for f in frames), tuple(k for k, f in enumerate(frames) if f.key_frame)


@pytest.mark.parametrize('name', NAMES)
def test_frame_table_is_the_sequential_decode(name, reference):
    tab = frame_table(SAMPLES / name)
    assert isinstance(tab, FrameTable) and (tab.pts, tab.keys) == _labels(SAMPLES / name)
    assert len(tab.pts) == len(tab.times) == len(reference[name])
    assert tab.by_pts == (name != DAMAGED) and tab.restart == (tab.by_pts and len(tab.keys) > 1)  # restarts need a second keyframe


def test_attributes_match_manifest():
    for e in MANIFEST:
        r = VideoReader(SAMPLES / e['file'])
        assert (r.num_frames, r.height, r.width) == (e['frames'], e['height'], e['width'])
        assert r.fps == pytest.approx(e['fps']) and r.duration == pytest.approx(e['frames'] / e['fps'], abs=2e-3)
        assert r.path == SAMPLES / e['file'] and len(r) == e['frames']
        assert r.times.dtype == np.float64 and r.times.shape == (e['frames'],) and r.times[0] == 0
        assert np.allclose(r.times, np.arange(e['frames']) / e['fps'], atol=1e-3)  # constant rate: k / fps, up to clock ticks
        assert r.constant_rate and r.mean_fps == pytest.approx(e['fps'], rel=1e-3)
        assert isinstance(r.info, VideoInfo) and r.info.problems == () and r.info.rotation == 0


def test_empty_indices_and_tensor_kinds():
    r = VideoReader(SAMPLES / NAMES[0])
    assert r.get([]).shape == (0, r.height, r.width, 3)
    a = r.get(np.array([3, 1], dtype=np.int32))
    b = r.get(torch.tensor([3, 1]))
    c = r.get((3, 1))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert [read_index_code(f) for f in a] == [3, 1]


def test_decoder_released_outside_with_block():
    r = VideoReader(SAMPLES / NAMES[0])
    r.get([0])
    assert r._state is None  # nothing kept between calls
    with r:
        r.get([0]); g = r._state['gen']
        r.get([2])
        assert r._state['gen'] is g  # a forward read goes on with the same decoder
    assert r._state is None
    r = VideoReader(SAMPLES / NAMES[0], mode='decord')
    r.get([0])
    assert r._vr is None  # released at once: no decord handles pile up
    with r:
        r.get([0]); h = r._vr
        r.get([5])
        assert h is not None and r._vr is h  # kept while held
    assert r._vr is None


# -- the real-world traps ---------------------------------------------------------------------

@pytest.mark.parametrize('name', HARD)
def test_hard_case_reads_exactly(name, hard):
    "Frame k shows code k and equals the sequential decode's frame k: random sets, after seeks, with and without a held reader."
    folder, cases = hard
    e = cases[name]
    ref = sequential_decode(folder / name, e['rotation'])[:e['frames']]
    r = quiet_reader(folder / name)
    n = r.num_frames
    assert n == e['frames'] == len(ref) and (r.height, r.width) == ref.shape[1:3]
    g = torch.Generator().manual_seed(HARD.index(name))
    orders = [torch.tensor([n - 1, 0, n // 2, n // 2 - 1, 1])] + [torch.randint(0, n, (9,), generator=g) for _ in range(4)]
    with r:
        for idx in orders:
            out = r.get(idx).numpy()
            assert [read_index_code(f) for f in out] == idx.tolist()
            assert np.array_equal(out, ref[idx.numpy()])
    for idx in orders[-2:]:
        assert [read_index_code(f) for f in r.get(idx)] == idx.tolist()
    with VideoReader(folder / name) if not e['problem'] else contextlib.nullcontext(r) as held:  # every frame, backwards
        assert [read_index_code(f) for f in held.get(torch.arange(n - 1, -1, -1))] == list(range(n - 1, -1, -1))


@pytest.mark.parametrize('name', HARD)
def test_hard_case_times_and_read_path(name, hard):
    folder, cases = hard
    e = cases[name]
    r = quiet_reader(folder / name)
    assert np.allclose(r.times, e['times'], atol=1e-3) and r.times[0] == 0  # the real timestamps
    assert r.info.seekable == e['seek'] and e['why'] in r.info.why
    assert r.constant_rate == (not name.startswith('vfr'))
    last = r.duration - r.times[-1]  # the last frame's own duration, or the median interval
    assert .25 * np.median(np.diff(r.times)) <= last <= 4 * np.median(np.diff(r.times))
    assert r.info.rotation == e['rotation']


def test_packed_bframes_are_named(hard):
    folder, cases = hard
    info = probe(folder / 'packed_bframes.avi')
    assert (info.why, info.times_from) == ('packed B-frames (DivX/Xvid): labels out of order', 'sorted pts')
    tab = frame_table(folder / 'packed_bframes.avi')
    assert list(tab.pts[:6]) == [1, 2, 4, 3, 5, 7] and not tab.by_pts and not tab.restart


def test_edit_list_counts_shown_frames(hard):
    folder, cases = hard
    info = probe(folder / 'edit_list.mp4')
    assert (info.packets, info.discarded, info.num_frames) == (60, 12, 48)  # the cut falls in a GOP: its start is decoded, not shown
    assert len(decord.VideoReader(str(folder / 'edit_list.mp4'))) == 60  # what a packet count says


@pytest.mark.parametrize('name', HARD)
def test_only_cut_files_warn_and_they_say_what_is_lost(name, hard):
    folder, cases = hard
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        r = VideoReader(folder / name)
    msgs = [str(w.message) for w in caught if w.category is VideoWarning]
    if not cases[name]['problem']: assert msgs == []; return
    assert len(msgs) == 1 and msgs[0].startswith(f'{folder / name}: cut short')
    assert f'{r.num_frames} frames' in msgs[0] and 'the rest is lost' in msgs[0]
    assert ('72 frames' if name != 'cut.mkv' else '3.00 s') in msgs[0]  # what the header promised


def test_file_with_nothing_usable_is_an_error(hard):
    folder, cases = hard
    p = folder / 'cut_no_index.mp4'
    with pytest.raises(VideoError, match='not a readable video') as e: VideoReader(p)
    assert str(p) in str(e.value)


def test_check_video_reports_each_case(hard):
    folder, cases = hard
    for name, e in cases.items():
        c = check_video(folder / name)
        assert isinstance(c, VideoCheck) and c.usable == e['usable'], name
        if not c.usable: assert e['problem'] in c.reason and c.line().startswith('SKIP'); continue
        assert (c.frames, c.read, c.rotation) == (e['frames'], 'seek' if e['seek'] else 'from start', e['rotation'])
        assert e['why'] in c.read_why and (e['problem'] in ' '.join(c.warnings) if e['problem'] else c.warnings == [])
        assert c.line().split()[0] == ('warn' if e['problem'] else 'ok')
    c = check_video(folder / 'vfr.mp4', size=(24, 32), min_frames=100)
    assert not c.usable and c.reason == 'too short: 48 frames, need at least 100'


def test_probe_cli_lines_json_and_exit_status(hard, tmp_path):
    folder, cases = hard
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        assert probe_cli([str(folder), '--size', '32', '40']) == 0
    lines = out.getvalue().splitlines()
    for name, e in cases.items():
        line = next(l for l in lines if f' {name}' in l or l.startswith(f'SKIP  {name}'))
        assert line.split()[0] == ('SKIP' if not e['usable'] else 'warn' if e['problem'] else 'ok'), line
        if e['usable']: assert f"{e['frames']} fr" in line and ('from start: ' if not e['seek'] else '  seek') in line and e['why'] in line
    usable = sum(e['usable'] for e in cases.values())
    assert lines[-1].startswith(f'{usable} of {len(cases)} videos usable')
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        assert probe_cli([str(folder), '--json', '--jobs', '2']) == 0
    doc = json.loads(out.getvalue())
    got = {Path(v['path']).name: v for v in doc['videos']}
    assert set(got) == set(cases) and doc['summary']['usable'] == usable
    assert all(got[n]['frames'] == e['frames'] and got[n]['usable'] == e['usable'] for n, e in cases.items() if e['usable'])
    assert doc['summary']['variable_rate'] == 2 and doc['summary']['from_start'] == 2
    (tmp_path / 'none').mkdir()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        assert probe_cli([str(folder / 'cut_no_index.mp4')]) == 1  # nothing usable
        assert probe_cli([str(tmp_path / 'none')]) == 1
    assert 'no usable video' in err.getvalue()


def test_probe_cli_console_script(hard):
    "The installed `pal-probe` runs and exits non-zero when nothing is usable."
    folder, _ = hard
    exe = Path(sys.executable).parent / 'pal-probe'
    if not exe.exists(): pytest.skip('pal-probe is not installed in this environment (pip install -e .)')
    ok = subprocess.run([str(exe), str(folder / 'vfr.mp4')], capture_output=True, text=True, env=os.environ)
    bad = subprocess.run([str(exe), str(folder / 'cut_no_index.mp4')], capture_output=True, text=True, env=os.environ)
    assert ok.returncode == 0 and 'vfr.mp4' in ok.stdout and bad.returncode == 1


# -- keyframe restarts are checked ------------------------------------------------------------

def test_failed_restart_check_falls_back_and_is_remembered(tmp_path, monkeypatch):
    "A table that claims a keyframe the stream does not have: the restart is caught, the read is still exact, and it sticks."
    monkeypatch.setenv('PAL_CACHE_DIR', str(tmp_path / 'cache'))
    p = write_video(tmp_path / 'v.mp4', render_scene(60, 48, 64, seed=3), 25, crf=18, g=15, threads=1, **{'x264-params': 'scenecut=0'})
    info, tab = V._lookup(p)
    assert tab.keys == (0, 15, 30, 45) and info.seekable
    V._TABLES[V._identity(p)] = info, V.replace(tab, keys=(0, 46))  # the seek to 46 lands on 45, which the table does not list
    assert [read_index_code(f) for f in read_exact(p, [50, 52])] == [50, 52]
    assert not probe(p).seekable and 'restart at keyframe 46' in probe(p).why
    V._TABLES.clear()  # a new process: the disk entry remembers it
    assert not probe(p).seekable and not frame_table(p).restart
    assert [read_index_code(f) for f in VideoReader(p).get([59, 3, 31])] == [59, 3, 31]


def test_restarts_are_used_on_ordinary_files(monkeypatch):
    "On a clean H.264 file reads seek to the keyframe before a far frame instead of decoding from the start."
    starts = []
    real = V._frames_from
    monkeypatch.setattr(V, '_frames_from', lambda path, start: starts.append(start) or real(path, start))
    p = SAMPLES / 'checker.mp4'  # keyframes every 15 frames
    assert [read_index_code(f) for f in read_exact(p, [2, 80])] == [2, 80]
    assert starts == [0, 75] and probe(p).seekable


# -- the frame-table cache --------------------------------------------------------------------

def test_cache_is_reused_across_processes(tmp_path, monkeypatch):
    "A second process reads the table from disk (building it would fail there); a changed file is decoded again."
    monkeypatch.setenv('PAL_CACHE_DIR', str(tmp_path / 'cache'))
    p = write_video(tmp_path / 'v.mp4', render_scene(30, 48, 64, seed=0), 15, crf=18, threads=1)
    r = VideoReader(p)
    entry = V._entry(V._identity(p))
    assert entry.is_file() and entry.parent.parent == cache_dir() == tmp_path / 'cache'
    script = ('import pal.video as V, sys\n'
              'def fail(path): sys.exit("rebuilt " + str(path))\n'
              'V._build = fail\n'
              f'r = V.VideoReader({str(p)!r}); print(r.num_frames, r.times[-1], r.get([29]).shape[0])')
    run = lambda: subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=os.environ)
    child = run()
    assert child.returncode == 0 and child.stdout.split() == ['30', str(r.times[-1]), '1'], child.stderr
    write_video(p, render_scene(20, 48, 64, seed=0), 15, crf=18, threads=1)  # another file version
    child = run()
    assert child.returncode != 0 and 'rebuilt' in child.stderr
    assert VideoReader(p).num_frames == 20


def test_one_build_per_file_version(tmp_path, monkeypatch):
    monkeypatch.setenv('PAL_CACHE_DIR', str(tmp_path / 'cache'))
    builds = []
    real = V._build
    monkeypatch.setattr(V, '_build', lambda path: builds.append(path) or real(path))
    p = write_video(tmp_path / 'v.mp4', render_scene(30, 48, 64, seed=0), 15, crf=18, threads=1)
    for _ in range(3): VideoReader(p).get([5])
    V._TABLES.clear()
    VideoReader(p)  # from disk
    assert len(builds) == 1


def test_memory_holds_few_tables_and_disk_the_rest(tmp_path, monkeypatch):
    "The in-process table cache is bounded; evicted tables come back from disk, not from another decode."
    monkeypatch.setenv('PAL_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setattr(V, '_MAX_TABLES', 2)
    paths = [write_video(tmp_path / f'v{i}.mp4', render_scene(10 + i, 48, 64, seed=i), 15, crf=18, threads=1) for i in range(4)]
    for p in paths: VideoReader(p)
    assert len(V._TABLES) <= 2
    builds = []
    real = V._build
    monkeypatch.setattr(V, '_build', lambda path: builds.append(path) or real(path))
    assert [VideoReader(p).num_frames for p in paths] == [10, 11, 12, 13] and builds == []
    assert [read_index_code(VideoReader(p).get([9])[0]) for p in paths] == [9] * 4


def test_damaged_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv('PAL_CACHE_DIR', str(tmp_path / 'cache'))
    p = write_video(tmp_path / 'v.mp4', render_scene(30, 48, 64, seed=0), 15, crf=18, threads=1)
    want = probe(p)
    entry = V._entry(V._identity(p))
    for junk in [b'', b'not a zip file', entry.read_bytes()[:100]]:
        entry.write_bytes(junk)
        V._TABLES.clear()
        assert V._load(V._identity(p)) is None
        assert probe(p) == want
        assert V._load(V._identity(p))[0] == V.replace(want, path=p.absolute())  # written again, whole


def test_unwritable_cache_warns_and_still_reads(tmp_path, monkeypatch):
    (tmp_path / 'file').write_text('a file, not a folder')
    monkeypatch.setenv('PAL_CACHE_DIR', str(tmp_path / 'file'))
    p = write_video(tmp_path / 'v.mp4', render_scene(12, 48, 64, seed=0), 15, crf=18, threads=1)
    with pytest.warns(VideoWarning, match='cannot write the frame-table cache'):
        r = VideoReader(p)
    assert [read_index_code(f) for f in r.get([11, 0])] == [11, 0]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('PAL_CACHE_DIR', str(tmp_path / 'a'))
    assert cache_dir() == tmp_path / 'a'
    monkeypatch.delenv('PAL_CACHE_DIR')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'x'))
    assert cache_dir() == tmp_path / 'x' / 'pal'
    monkeypatch.delenv('XDG_CACHE_HOME')
    assert cache_dir() == Path.home() / '.cache' / 'pal'


# -- rotation ---------------------------------------------------------------------------------

@pytest.mark.parametrize('rotation', [90, -90, 180])
def test_rotation_is_applied_and_size_is_as_shown(tmp_path, rotation):
    shown = render_scene(12, 48, 64, seed=6)
    p = write_video(tmp_path / 'r.mp4', np.ascontiguousarray(np.rot90(shown, -rotation // 90, axes=(1, 2))), 12,
                    rotation=rotation, crf=18, g=4, threads=1)
    r = VideoReader(p)
    assert (r.height, r.width, r.info.rotation) == (48, 64, rotation)
    out = r.get([7, 2])
    assert out.shape == (2, 48, 64, 3) and [read_index_code(f) for f in out] == [7, 2]
    assert np.abs(out.numpy().astype(int) - shown[[7, 2]]).mean() < 6
    small = VideoReader(p, size=(24, 40)).get([5])
    assert small.shape == (1, 24, 40, 3) and read_index_code(small[0], src_hw=(48, 64)) == 5


def test_mirrored_display_matrix_is_warned_about(tmp_path):
    frames = render_scene(6, 48, 64, seed=6)
    with av.open(str(tmp_path / 'm.mp4'), 'w') as c:
        s = c.add_stream('libx264', rate=6)
        s.height, s.width, s.pix_fmt = 48, 64, 'yuv420p'
        s.set_display_rotation(0, hflip=True)
        for f in frames: c.mux(s.encode(av.VideoFrame.from_ndarray(f, format='rgb24')))
        c.mux(s.encode())
    with pytest.warns(VideoWarning, match='mirrors'):
        r = VideoReader(tmp_path / 'm.mp4')
    assert [read_index_code(f) for f in r.get([0, 5])] == [0, 5]  # as stored


# -- resizing ---------------------------------------------------------------------------------

@pytest.mark.parametrize('name', [NAMES[0], 'stripes_odd.mkv', DAMAGED])
@pytest.mark.parametrize('size', [(40, 50), (112, 112)])
def test_resize_gives_requested_size_and_same_content(name, size, reference):
    e = next(e for e in MANIFEST if e['file'] == name)
    r = VideoReader(SAMPLES / name, size=size)
    assert (r.height, r.width) == size
    idx = [7, 2, 30]
    out = r.get(idx)
    assert out.shape == (3, *size, 3)
    assert [read_index_code(f, src_hw=(e['height'], e['width'])) for f in out] == idx
    native = torch.from_numpy(reference[name][idx]).permute(0, 3, 1, 2).float()
    expect = F.interpolate(native, size=size, mode='bilinear', antialias=True, align_corners=False)
    err = (out.permute(0, 3, 1, 2).float() - expect).abs().mean()
    assert err < 12, err  # same picture, up to the interpolation filter
    shifted = (out.permute(0, 3, 1, 2).float()[[1, 2, 0]] - expect).abs().mean()
    assert shifted > err + 5  # and other frames are clearly different


# -- more containers --------------------------------------------------------------------------

EXT_KINDS = {'.mov': ('libx264', {}), '.m4v': ('libx264', {}), '.mpg': ('mpeg1video', dict(bit_rate=800_000)), '.mpeg': ('mpeg2video', dict(bit_rate=800_000, bf=2)),
             '.ts': ('libx264', {}), '.m2ts': ('libx264', {}), '.3gp': ('libx264', {}), '.ogv': ('libvpx', dict(bit_rate=1_000_000)),
             '.flv': ('flv', dict(bit_rate=800_000)), '.wmv': ('wmv2', dict(bit_rate=800_000))}

@pytest.mark.parametrize('ext', list(EXT_KINDS))
def test_more_containers_are_listed_and_read_exactly(tmp_path, ext):
    codec, kw = EXT_KINDS[ext]
    p = write_video(tmp_path / f'v{ext.upper()}', render_scene(40, 48, 64, seed=4), 25, codec, g=10, **kw)  # 25: a rate MPEG-1 allows
    assert ext in VIDEO_EXTS and list_videos(tmp_path) == [p]
    r = VideoReader(p)
    assert r.num_frames == 40 and np.allclose(r.times, np.arange(40) / 25, atol=1e-3)
    ref = sequential_decode(p)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    with r:
        for chunk in perm.split(7):
            assert np.array_equal(r.get(chunk).numpy(), ref[chunk.numpy()])


# -- bad input --------------------------------------------------------------------------------

def _truncated(tmp, name, frac=.5):
    data = (SAMPLES / name).read_bytes()
    p = tmp / f'trunc_{name}'
    p.write_bytes(data[:int(len(data) * frac)])
    return p

def _audio_only(tmp):
    p = tmp / 'speech.mp4'
    with av.open(str(p), 'w') as c:
        s = c.add_stream('aac', rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format='fltp', layout='mono')
        f.sample_rate = 8000
        for q in [*s.encode(f), *s.encode()]: c.mux(q)
    return p

BAD = {
    'missing': lambda t: t / 'nope.mp4',
    'empty': lambda t: (t / 'empty.mp4').write_bytes(b'') and None or t / 'empty.mp4',
    'text named mp4': lambda t: (t / 'notes.mp4').write_text('not a video\n' * 20) and t / 'notes.mp4',
    'truncated mp4 (index lost)': lambda t: _truncated(t, NAMES[0]),
    'random bytes avi': lambda t: (t / 'noise.avi').write_bytes(bytes(range(256)) * 20) and t / 'noise.avi',
    'folder': lambda t: (t / 'folder.mp4').mkdir() or t / 'folder.mp4',
    'audio only': _audio_only,
}

@pytest.mark.parametrize('kind', list(BAD))
def test_bad_file_raises_video_error_naming_it(kind, tmp_path):
    p = BAD[kind](tmp_path)
    with pytest.raises(VideoError) as e:
        VideoReader(p).get([0])
    assert str(p) in str(e.value)
    c = check_video(p)
    assert not c.usable and c.reason and str(p) not in c.reason.split(':')[0]


@pytest.mark.parametrize('indices', [[-1], [10_000], [0, 96], [[0, 1]], [0.5], torch.tensor([1.])])
def test_bad_indices_raise_video_error(indices):
    r = VideoReader(SAMPLES / NAMES[0])
    with pytest.raises(VideoError) as e:
        r.get(indices)
    assert str(r.path) in str(e.value)
    if isinstance(indices, list) and isinstance(indices[0], int):
        assert f'0..{r.num_frames - 1}' in str(e.value)


@pytest.mark.parametrize('name', ['dots.avi', 'stripes_odd.mkv'])
def test_truncated_sample_reads_what_it_holds_with_a_warning(tmp_path, name, reference):
    "Cut at half its bytes: the whole frames before the cut read exactly, and the warning says how much is lost."
    p = _truncated(tmp_path, name)
    with pytest.warns(VideoWarning, match='the rest is lost') as w:
        r = VideoReader(p)
    assert str(p) in str(w[0].message)
    n = r.num_frames
    assert 0 < n < len(reference[name]) * .75
    assert np.array_equal(r.get(range(n)).numpy(), reference[name][:n])


def test_overcounted_container_gives_true_count(tmp_path):
    "The container (and decord) count 5 frames more than decode: the reader reports and reads the true ones."
    p = write_overcounted_mp4(tmp_path / 'over.mp4', render_scene(48, 48, 64, seed=5), 24, extra=5)
    assert len(decord.VideoReader(str(p))) == 53
    r = VideoReader(p)
    assert r.num_frames == 48 and r.fps == 24 and r.mode == 'exact' and r.info.header_frames == 53
    assert [read_index_code(f) for f in r.get([47, 0, 46])] == [47, 0, 46]
    with pytest.raises(VideoError, match='0..47'):
        r.get([48])


def test_probe_is_cached_but_sees_a_changed_file(tmp_path):
    p = write_video(tmp_path / 'v.mp4', render_scene(30, 48, 64, seed=0), 15, crf=18)
    assert VideoReader(p).num_frames == 30
    write_video(p, render_scene(20, 48, 64, seed=0), 15, crf=18)
    assert VideoReader(p).num_frames == 20


# -- readers in worker processes --------------------------------------------------------------

class Clips(torch.utils.data.Dataset):
    def __init__(self, paths): self.paths = paths
    def __len__(self): return len(self.paths)
    def __getitem__(self, i):
        with VideoReader(self.paths[i], size=(48, 64)) as r:  # opened inside the worker, released at once
            return r.get(clip_frame_indices(1, 4, 3))


def test_readers_work_in_dataloader_workers():
    paths = [SAMPLES / n for n in NAMES]
    main = [Clips(paths)[i] for i in range(len(paths))]
    dl = torch.utils.data.DataLoader(Clips(paths), batch_size=None, num_workers=2)
    for a, b in zip(dl, main):
        assert torch.equal(a, b)
    assert [read_index_code(f, src_hw=(61, 97)) for f in main[NAMES.index('stripes_odd.mkv')]] == [1, 4, 7, 10]


# -- listing ----------------------------------------------------------------------------------

def test_list_videos(tmp_path):
    for p in ['b.mp4', 'a/c.AVI', 'a/z/d.mkv', 'e.webm', 'f.mov', 'g.txt', 'h.mp4.json', 'a/i.MP4', 'j.m4v', 'k.MPG', 'l.ts', 'm.wmv']:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_bytes(b'x')
    got = [p.relative_to(tmp_path).as_posix() for p in list_videos(tmp_path)]
    assert got == ['a/c.AVI', 'a/i.MP4', 'a/z/d.mkv', 'b.mp4', 'e.webm', 'f.mov', 'j.m4v', 'k.MPG', 'l.ts', 'm.wmv']
    assert [p.name for p in list_videos(SAMPLES)] == sorted(NAMES)
    assert {'.m4v', '.mpg', '.mpeg', '.ts', '.m2ts', '.3gp', '.ogv', '.flv', '.wmv'} <= set(VIDEO_EXTS)
    with pytest.raises(FileNotFoundError, match='nowhere'):
        list_videos(tmp_path / 'nowhere')


# -- index math -------------------------------------------------------------------------------

def test_clip_frame_indices_values():
    assert clip_frame_indices(5, 4, 3).tolist() == [5, 8, 11, 14]
    assert clip_frame_indices(0, 3).tolist() == [0, 1, 2]
    assert clip_span(4, 3) == 10 and clip_span(1, 7) == 1
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert window_starts(10, 4, 4).tolist() == [0, 4]
    assert window_starts(10, 4, 4, cover_end=True).tolist() == [0, 4, 6]
    assert window_starts(3, 4, 2).tolist() == [0]
    assert clamp_indices(torch.tensor([-2, 0, 5, 9]), 6).tolist() == [0, 0, 5, 5]


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 500), clip_len=st.integers(1, 32), stride=st.integers(1, 8))
def test_clip_indices_property(start, clip_len, stride):
    idx = clip_frame_indices(start, clip_len, stride)
    assert idx.dtype == torch.long and len(idx) == clip_len and idx[0] == start
    assert (idx.diff() == stride).all()
    assert idx[-1] - idx[0] + 1 == clip_span(clip_len, stride)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 400), window=st.integers(1, 64), stride=st.integers(1, 64), cover=st.booleans())
def test_window_starts_property(n, window, stride, cover):
    s = window_starts(n, window, stride, cover_end=cover)
    assert s[0] == 0 and (s.diff() > 0).all()
    if n >= window:
        assert (s + window <= n).all()  # every window fits
        assert (s.diff()[:-1] == stride).all() if cover else (s.diff() == stride).all()
        last = s[-1] + window
        assert (n - last < stride) or (cover and last == n)  # nothing coverable is left out
        if cover: assert last == n
    else:
        assert s.tolist() == [0]


@pytest.mark.parametrize('name,kw,seek', [
    ('mpeg4_bframes.mp4', dict(codec='mpeg4', bit_rate=400_000, bf=2, g=20), True),  # open GOP
    ('h264_bframes.avi', dict(codec='libx264', crf=18, bf=2, g=20), False),  # AVI: labels in decode order
    ('h264_bframes.mkv', dict(codec='libx264', crf=18, bf=3, g=20), True),
    ('hevc_open_gop.mp4', {'codec': 'libx265', 'x265-params': 'keyint=20:min-keyint=20:open-gop=1:log-level=error'}, True),
])
def test_other_stream_kinds_are_exact(tmp_path, name, kw, seek):
    "Open-GOP MPEG-4 and HEVC (frames shown before their keyframe) and H.264 B-frames in AVI: exact too."
    p = write_video(tmp_path / name, render_scene(60, 48, 64, seed=4), 25, **kw)
    ref = sequential_decode(p)
    r = VideoReader(p)
    perm = torch.randperm(len(ref), generator=torch.Generator().manual_seed(0))
    with r:
        for chunk in perm.split(7):
            assert np.array_equal(r.get(chunk).numpy(), ref[chunk.numpy()])
    assert probe(p).seekable == seek  # and no restart failed its check


def test_decord_mode_resizes_where_decord_cannot():
    "decord 0.6 fails to resize to width 24 (a padded-row copy error); the reader resizes those frames itself, close to the exact path."
    name = next(n for n in NAMES if n != DAMAGED)  # decord mode is only right where it was checked
    for size in [(37, 24), (37, 48)]:
        with VideoReader(SAMPLES / name, size=size, mode='decord') as r: got = r.get([0, 5, 9]).float()
        assert r.mode == 'decord'
        want = VideoReader(SAMPLES / name, size=size).get([0, 5, 9]).float()
        assert got.shape == want.shape == (3, *size, 3)
        assert (got - want).abs().mean() < 3, (got - want).abs().mean()  # same frames, scaled by another filter
        other = VideoReader(SAMPLES / name, size=size).get([1, 6, 10]).float()
        assert (got - want).abs().mean() < (got - other).abs().mean()  # and not the neighbouring frames


@pytest.mark.parametrize('name', ['packed_bframes.avi', 'edit_list.mp4', 'rotated.mp4', 'vfr.mp4'])
def test_decord_mode_only_where_checked(name, hard):
    folder, cases = hard
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        r = VideoReader(folder / name, mode='decord')
    refused = [str(w.message) for w in caught if 'not read with decord' in str(w.message)]
    assert r.mode == ('decord' if name == 'vfr.mp4' else 'exact') and len(refused) == (name != 'vfr.mp4')
    n = r.num_frames
    assert [read_index_code(f) for f in r.get([n - 1, 3, n // 2])] == [n - 1, 3, n // 2]
