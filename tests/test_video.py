"Tests for pal.video: exact frames against a sequential PyAV decode, resizing, bad input, index math."
import json
from pathlib import Path

import av
import decord
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from pal.samples import sample_dir, read_index_code, render_scene, write_video, write_overcounted_mp4
from pal.video import (VideoError, VideoReader, list_videos, probe, clip_frame_indices, clip_span,
                       window_starts, clamp_indices, FrameTable, frame_table, _packet_table, _decode_all)

SAMPLES = sample_dir()
MANIFEST = json.loads((SAMPLES / 'manifest.json').read_text())['videos']
NAMES = [e['file'] for e in MANIFEST]
DAMAGED = next(e['file'] for e in MANIFEST if e['damaged'])


def sequential_decode(path) -> np.ndarray:
    "The reference: every frame of a plain forward PyAV decode, uint8 [T, H, W, 3]."
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format='rgb24') for f in c.decode(c.streams.video[0])])


@pytest.fixture(scope='module')
def reference():
    return {name: sequential_decode(SAMPLES / name) for name in NAMES}


# -- exact frames -----------------------------------------------------------------------------

@pytest.mark.parametrize('name', NAMES)
def test_reference_decode_carries_index_code(name, reference):
    "The reference decode itself shows frame k's code k (so the comparisons below are meaningful)."
    ref = reference[name]
    assert [read_index_code(f) for f in ref] == list(range(len(ref)))


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('mode', ['auto', 'decord'])
def test_get_is_exact_in_any_order(name, mode, reference):
    if mode == 'decord' and name == DAMAGED: pytest.skip('decord is only right where probe trusts the file')
    ref = reference[name]
    r = VideoReader(SAMPLES / name, mode=mode)
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


def test_damaged_sample_really_fools_decord(reference):
    "The damaged sample reproduces the bug: decord alone returns frame k-2 after reading later frames."
    ref = reference[DAMAGED]
    vr = decord.VideoReader(str(SAMPLES / DAMAGED), num_threads=1)
    assert [read_index_code(f) for f in vr.get_batch(list(range(10))).asnumpy()] == list(range(10))  # forward: right
    vr.get_batch([100])
    codes = [read_index_code(f) for f in vr.get_batch([40, 5]).asnumpy()]
    assert codes != [40, 5]
    info = probe(SAMPLES / DAMAGED)
    assert not info.seekable and 'pts = dts' in info.why
    assert VideoReader(SAMPLES / DAMAGED).mode == 'exact'


@pytest.mark.parametrize('name', NAMES)
def test_frame_table_from_packets_equals_full_decode(name):
    "Trusted files are indexed from their packets (no decoding); the table is the one a full decode gives."
    p = SAMPLES / name
    dec = _decode_all(p)
    full = FrameTable(tuple(q for q, _ in dec), tuple(k for k, (_, key) in enumerate(dec) if key), True)
    assert VideoReader(p).mode == 'exact'
    if name == DAMAGED:
        assert not probe(p).seekable and _packet_table(p).pts != full.pts  # the packets lie: decoded instead
        assert frame_table(p).pts == full.pts
    else:
        assert probe(p).seekable and _packet_table(p) == full == frame_table(p)


def test_attributes_match_manifest():
    for e in MANIFEST:
        r = VideoReader(SAMPLES / e['file'])
        assert (r.num_frames, r.height, r.width) == (e['frames'], e['height'], e['width'])
        assert r.fps == pytest.approx(e['fps']) and r.duration == pytest.approx(e['frames'] / e['fps'])
        assert r.path == SAMPLES / e['file'] and len(r) == e['frames']


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


# -- bad input --------------------------------------------------------------------------------

def _truncated(tmp, name, frac=.5):
    data = (SAMPLES / name).read_bytes()
    p = tmp / f'trunc_{name}'
    p.write_bytes(data[:int(len(data) * frac)])
    return p

def _faststart_truncated(tmp):
    p = write_video(tmp / 'faststart.mp4', render_scene(48, 48, 64, seed=1), 24, crf=18,
                    container_options={'movflags': 'faststart'})
    data = p.read_bytes()
    assert data[24:40].find(b'moov') >= 0  # the index is at the front, so the file opens
    q = tmp / 'faststart_cut.mp4'
    q.write_bytes(data[:len(data) // 2])
    return q

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
    'truncated mp4 (index kept)': _faststart_truncated,
    'random bytes avi': lambda t: (t / 'noise.avi').write_bytes(bytes(range(256)) * 20) and t / 'noise.avi',
    'folder': lambda t: (t / 'folder.mp4').mkdir() or t / 'folder.mp4',
    'truncated avi': lambda t: _truncated(t, 'dots.avi'),
    'audio only': _audio_only,
}

@pytest.mark.parametrize('kind', list(BAD))
def test_bad_file_raises_video_error_naming_it(kind, tmp_path):
    p = BAD[kind](tmp_path)
    with pytest.raises(VideoError) as e:
        VideoReader(p).get([0])
    assert str(p) in str(e.value)


@pytest.mark.parametrize('indices', [[-1], [10_000], [0, 96], [[0, 1]], [0.5], torch.tensor([1.])])
def test_bad_indices_raise_video_error(indices):
    r = VideoReader(SAMPLES / NAMES[0])
    with pytest.raises(VideoError) as e:
        r.get(indices)
    assert str(r.path) in str(e.value)
    if isinstance(indices, list) and isinstance(indices[0], int):
        assert f'0..{r.num_frames - 1}' in str(e.value)


def test_truncated_avi_raises_and_truncated_mkv_reads_what_it_holds(tmp_path):
    "A cut AVI ends in a partial frame (decord would silently repeat the one before): error. A cut MKV drops whole frames."
    p = _truncated(tmp_path, 'dots.avi')
    with pytest.raises(VideoError, match='corrupt') as e:
        VideoReader(p)
    assert str(p) in str(e.value)
    r = VideoReader(_truncated(tmp_path, 'stripes_odd.mkv'))
    assert 0 < r.num_frames < 120
    assert [read_index_code(f) for f in r.get(range(r.num_frames))] == list(range(r.num_frames))


def test_overcounted_container_gives_true_count(tmp_path):
    "The container (and decord) count 5 frames more than decode: the reader reports and reads the true ones."
    p = write_overcounted_mp4(tmp_path / 'over.mp4', render_scene(48, 48, 64, seed=5), 24, extra=5)
    assert len(decord.VideoReader(str(p))) == 53
    r = VideoReader(p)
    assert r.num_frames == 48 and r.fps == 24 and r.mode == 'exact'
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
    for p in ['b.mp4', 'a/c.AVI', 'a/z/d.mkv', 'e.webm', 'f.mov', 'g.txt', 'h.mp4.json', 'a/i.MP4']:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_bytes(b'x')
    got = [p.relative_to(tmp_path).as_posix() for p in list_videos(tmp_path)]
    assert got == ['a/c.AVI', 'a/i.MP4', 'a/z/d.mkv', 'b.mp4', 'e.webm', 'f.mov']
    assert [p.name for p in list_videos(SAMPLES)] == sorted(NAMES)
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


@pytest.mark.parametrize('name,kw,why', [
    ('mpeg4_bframes.mp4', dict(codec='mpeg4', bit_rate=400_000, bf=2, g=20), 'open GOP'),
    ('h264_bframes.avi', dict(codec='libx264', crf=18, bf=2, g=20), 'pts = dts'),
    ('h264_bframes.mkv', dict(codec='libx264', crf=18, bf=3, g=20), ''),
])
def test_other_stream_kinds_are_exact(tmp_path, name, kw, why):
    "Open-GOP MPEG-4 (decord lands 2 frames late near keyframes) and H.264 B-frames in AVI (no pts): exact too."
    p = write_video(tmp_path / name, render_scene(60, 48, 64, seed=4), 25, **kw)
    ref = sequential_decode(p)
    r = VideoReader(p)
    assert why in r.info.why and r.info.seekable == (not why) and r.mode == 'exact'  # trusted: indexed from packets
    perm = torch.randperm(len(ref), generator=torch.Generator().manual_seed(0))
    with r:
        for chunk in perm.split(7):
            assert np.array_equal(r.get(chunk).numpy(), ref[chunk.numpy()])


def test_decord_mode_resizes_where_decord_cannot():
    "decord 0.6 fails to resize to width 24 (a padded-row copy error); the reader resizes those frames itself, close to the exact path."
    name = next(n for n in NAMES if n != DAMAGED)  # decord mode is only right where probe trusts the file
    for size in [(37, 24), (37, 48)]:
        with VideoReader(SAMPLES / name, size=size, mode='decord') as r: got = r.get([0, 5, 9]).float()
        want = VideoReader(SAMPLES / name, size=size).get([0, 5, 9]).float()
        assert got.shape == want.shape == (3, *size, 3)
        assert (got - want).abs().mean() < 3, (got - want).abs().mean()  # same frames, scaled by another filter
        other = VideoReader(SAMPLES / name, size=size).get([1, 6, 10]).float()
        assert (got - want).abs().mean() < (got - other).abs().mean()  # and not the neighbouring frames
