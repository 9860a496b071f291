"""Check the paste explorer (`pal.paste.explore`, notebook 03) the way a learner uses it: in JupyterLab,
in headless Chromium.

Steps, each with its own wait and failure message (no retries):
1. start JupyterLab from this Python's environment (.venv) on a free 127.0.0.1 port with a random
   token, and throwaway Jupyter config, data and runtime folders (so nothing of the user's Jupyter
   setup counts and nothing is written to it), serving a copy of tools/explorer_check.ipynb;
2. open the notebook: no "Select Kernel" dialog may ask (it names the `python3` kernel), and the
   kernel must come up idle;
3. run all cells; wait until every cell ran and the kernel is idle again, then for the explorer's
   controls and its figure;
4. type a new seed into the seed slider's readout, wait for the figure to change; drag the
   handle of `scale_B` with the mouse, wait for the figure to change again;
5. run the notebook's last cell, which prints the widget's state as JSON: the values must be the
   ones set in the browser, the kernel's Python this environment's, and the plan the one
   `pal.sampling.sample_plan` gives for those values;
6. no uncaught JavaScript error on the page, no error output in the notebook; the server is shut
   down (also when a step fails).
Screenshots of each stage go to test-artifacts/explorer/ (`failure.png` and the server log when
a step fails).

`--without-widgets` disables the widget front end (`jupyter labextension disable --level=user
@jupyter-widgets/jupyterlab-manager` in the throwaway config folder): the check must then fail,
at step 3, saying so. `--doc-image PATH` also saves a picture of the explorer after the two moves
(nbs/images/03_explorer.png is made this way).

Chromium: /usr/bin/chromium (Debian's package, installed by tools/check_docs.py's `ensure_chromium`
when missing), driven by Playwright (`playwright` on PyPI, a dev requirement) pointed at that binary:
no browser download, never `playwright install`.

Usage: python tools/check_explorer.py [--artifacts test-artifacts/explorer] [--without-widgets] [--doc-image PATH]
"""
from __future__ import annotations
import argparse, json, os, re, secrets, shutil, signal, socket, subprocess, sys, tempfile, time
import urllib.error, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / 'tools' / 'explorer_check.ipynb'
BIN = Path(sys.executable).parent  # .venv/bin: the jupyter of this environment
SEED = 7  # typed into the seed slider (it starts at 0)
WIDGETS_EXT = '@jupyter-widgets/jupyterlab-manager'


class CheckFailed(Exception):
    "A step of the check failed; the message says which and why."


def log(msg: str): print(f'[explorer-check] {msg}', flush=True)


def free_port() -> int:
    "A TCP port on 127.0.0.1 that nothing listens on now."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The Jupyter server

class Lab:
    "JupyterLab on 127.0.0.1 with a token and throwaway Jupyter folders under `tmp`; `stop` shuts it down."
    def __init__(self, tmp: Path, without_widgets: bool):
        self.tmp, self.port, self.token = tmp, free_port(), secrets.token_hex(16)
        dirs = {k: tmp / k for k in ('config', 'data', 'runtime', 'ipython', 'work')}
        for d in dirs.values(): d.mkdir()
        shutil.copy(NOTEBOOK, dirs['work'] / NOTEBOOK.name)
        self.env = {k: v for k, v in os.environ.items() if k not in ('MPLBACKEND', 'JUPYTER_PATH', 'JUPYTER_CONFIG_PATH')}
        # MPLBACKEND=Agg (set by tools/test.sh) would stop the kernel's inline backend from showing figures
        self.env.update(JUPYTER_CONFIG_DIR=str(dirs['config']), JUPYTER_DATA_DIR=str(dirs['data']),
                        JUPYTER_RUNTIME_DIR=str(dirs['runtime']), IPYTHONDIR=str(dirs['ipython']),
                        JUPYTER_PLATFORM_DIRS='1', PYTHONHASHSEED='0', OMP_NUM_THREADS='1')
        if without_widgets:
            r = subprocess.run([str(BIN / 'jupyter'), 'labextension', 'disable', '--level=user', WIDGETS_EXT],
                               env=self.env, capture_output=True, text=True)
            if r.returncode: raise CheckFailed(f'could not disable {WIDGETS_EXT}: {r.stdout}{r.stderr}')
            log(f'{WIDGETS_EXT} disabled in the throwaway config {dirs["config"]}')
        settings = dirs['config'] / 'lab-user-settings' / '@jupyterlab' / 'apputils-extension'
        settings.mkdir(parents=True)  # no "get notified about Jupyter news?" toast over the notebook
        (settings / 'notification.jupyterlab-settings').write_text(json.dumps(dict(fetchNews='false', checkForUpdates=False)))
        self.log_path = tmp / 'server.log'
        self.log_file = open(self.log_path, 'w')
        cmd = [str(BIN / 'jupyter'), 'lab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={self.port}',
               '--ServerApp.port_retries=0', f'--IdentityProvider.token={self.token}', f'--ServerApp.root_dir={dirs["work"]}',
               '--LabApp.expose_app_in_browser=True', '--LabApp.news_url=None', '--LabApp.extension_manager=readonly',
               '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate',
               f'--LabApp.user_settings_dir={dirs["config"] / "lab-user-settings"}',
               f'--LabApp.workspaces_dir={dirs["config"] / "lab-workspaces"}']
        if os.geteuid() == 0: cmd.append('--allow-root')  # CI and these machines run as root
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=dirs['work'], start_new_session=True)
        self.url = f'http://127.0.0.1:{self.port}'

    def api(self, path: str, method: str = 'GET', timeout: float = 5):
        req = urllib.request.Request(f'{self.url}{path}', method=method, headers={'Authorization': f'token {self.token}'})
        with urllib.request.urlopen(req, timeout=timeout) as r: return json.loads(r.read() or b'null')

    def wait_ready(self, timeout: float):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise CheckFailed(f'JupyterLab exited with code {self.proc.returncode} while starting:\n{self.log_tail()}')
            try:
                self.api('/api/status'); return
            except (urllib.error.URLError, ConnectionError, TimeoutError): time.sleep(0.2)
        raise CheckFailed(f'JupyterLab did not answer on port {self.port} within {timeout:.0f} s:\n{self.log_tail()}')

    def log_tail(self, n: int = 40) -> str:
        self.log_file.flush()
        lines = self.log_path.read_text(errors='replace').splitlines()
        return '\n'.join('    ' + l for l in lines[-n:])

    @staticmethod
    def _stat(pid: int) -> tuple[int, int] | None:
        "(parent id, start time) of a process, None if it is gone."
        try: f = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
        except (OSError, IndexError): return None
        return int(f[1]), int(f[19])

    def descendants(self) -> list[tuple[int, int]]:
        "(id, start time) of the server's children and their children (kernels run in sessions of their own)."
        kids = {}
        for d in Path('/proc').iterdir():
            if d.name.isdigit() and (st := self._stat(int(d.name))): kids.setdefault(st[0], []).append((int(d.name), st[1]))
        out, todo = [], [self.proc.pid]
        while todo:
            for k in kids.get(todo.pop(), []): out.append(k); todo.append(k[0])
        return out

    def stop(self, timeout: float = 15) -> str:
        "Shut the server and its kernels down: the shutdown API, else SIGTERM, else SIGKILL; then any kernel left."
        how, kids = 'api', self.descendants()
        if self.proc.poll() is None:
            try: self.api('/api/shutdown', 'POST')
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                how = 'SIGTERM'; self.proc.terminate()
            try: self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if how == 'api': how = 'SIGTERM'; self.proc.terminate()
                try: self.proc.wait(10)
                except subprocess.TimeoutExpired: how = 'SIGKILL'; self.proc.kill(); self.proc.wait()
        left = []
        for pid, start in kids:
            if (st := self._stat(pid)) and st[1] == start:  # still that process, not a new one with its id
                os.kill(pid, signal.SIGKILL); left.append(pid)
        if left: how += f', then SIGKILL to leftover processes {left}'
        self.log_file.close()
        return how


# ---------------------------------------------------------------------------------------------
# JupyterLab in the browser (window.jupyterapp, exposed by --LabApp.expose_app_in_browser)

JS_STATE = '''() => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return {app: false};
  const panel = app.shell.currentWidget;
  const dialogs = [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText.slice(0, 200));
  if (!panel || !panel.sessionContext || !panel.content) return {app: true, panel: false, dialogs};
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code')
                     .map(c => ({count: c.model.executionCount, outputs: c.model.outputs.length}));
  return {app: true, panel: true, dialogs, ready: panel.sessionContext.isReady,
          kernel: kernel ? kernel.status : null, kernelName: kernel ? kernel.name : null,
          kernelDisplay: panel.sessionContext.kernelDisplayName, cells};
}'''


class Browser:
    "One Chromium page on JupyterLab, with waits that end in a clear CheckFailed."
    def __init__(self, page, artifacts: Path, timeout: float):
        self.page, self.artifacts, self.timeout = page, artifacts, timeout
        self.page_errors, self.console_errors = [], []
        page.on('pageerror', lambda e: self.page_errors.append(str(e)))
        page.on('console', lambda m: self.console_errors.append(m.text) if m.type == 'error' else None)

    def state(self) -> dict: return self.page.evaluate(JS_STATE)

    def wait(self, what: str, ok, timeout: float | None = None, poll: float = 0.1):
        "Poll `ok()` until it returns something true; fail at once on error output, or with `what` and the state at the end."
        end = time.time() + (timeout or self.timeout)
        while time.time() < end:
            if errs := self.errors_in_notebook():
                raise CheckFailed(f'error output in the notebook while waiting for {what}:\n' + '\n'.join(errs)[-3000:])
            if last := ok(): return last
            time.sleep(poll)
        raise CheckFailed(f'timed out after {timeout or self.timeout:.0f} s waiting for {what}; JupyterLab state: {self.state()}')

    def shot(self, name: str, full: bool = False):
        self.page.screenshot(path=str(self.artifacts / f'{name}.png'), full_page=full)

    def no_dialog(self, st: dict) -> dict:
        "`st`, unless a dialog is open: then fail (a learner would have to answer it)."
        if st.get('dialogs'):
            raise CheckFailed(f'a dialog opened in JupyterLab: {st["dialogs"]} (a "Select Kernel" dialog means the notebook '
                              'names no kernel that JupyterLab has; see tools/set_kernelspec.py)')
        return st

    def kernel_idle(self, st: dict | None = None) -> bool:
        st = self.no_dialog(st or self.state())
        return bool(st.get('ready') and st.get('kernel') == 'idle')

    def figure_src(self) -> str | None:
        "The data URL of the explorer's figure, None while there is none."
        img = self.page.locator('.widget-interact .jp-OutputArea-output img')
        return img.first.get_attribute('src') if img.count() else None

    def wait_new_figure(self, old: str | None, what: str) -> str:
        "Wait for the figure to differ from `old` and the kernel to be idle again; returns the new figure."
        src = self.wait(f'the figure to change after {what}', lambda: (s := self.figure_src()) and s != old and s)
        self.wait(f'the kernel to be idle after {what}', self.kernel_idle)
        return self.figure_src() if self.figure_src() != src else src

    def slider(self, name: str):
        "The ipywidgets slider whose description is `name`."
        label = self.page.locator('label.widget-label', has_text=re.compile(f'^{re.escape(name)}$'))
        return self.page.locator('.widget-interact .widget-slider').filter(has=label).first

    def errors_in_notebook(self) -> list[str]:
        "Texts of the error and stderr outputs on show, the explorer's own output included (JupyterLab renders both as stderr)."
        return self.page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()


def run_check(lab: Lab, br: Browser, doc_image: Path | None) -> dict:
    "Steps 2-6; returns the timings (seconds since opening the page, and from each move to its new figure)."
    page, t, t0 = br.page, {}, time.time()
    lap = lambda k: t.__setitem__(k, round(time.time() - t0, 1))
    # 2. open the notebook: no kernel dialog, kernel idle
    page.goto(f'{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}', wait_until='domcontentloaded')
    br.wait('JupyterLab to load (window.jupyterapp)', lambda: br.state().get('app'), timeout=60)
    br.wait('the notebook panel', lambda: br.no_dialog(br.state()).get('panel'), timeout=60)
    br.wait('the kernel to start and be idle', br.kernel_idle, timeout=60)
    st = br.state()
    if st['kernelName'] != 'python3': raise CheckFailed(f'the notebook opened with kernel {st["kernelName"]!r}, not python3')
    log(f'notebook open, kernel {st["kernelName"]} ({st["kernelDisplay"]}) idle, no dialog')
    lap('opened'); br.shot('1-opened')
    # 3. run all cells; wait for every cell, the kernel, the controls and the figure
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    n = len(st['cells'])
    br.wait('every cell to run', lambda: (s := br.state()) and all(c['count'] for c in s['cells']) and br.kernel_idle(s),
            timeout=120)
    lap('ran')
    try: br.wait('the explorer\'s controls', lambda: br.slider('seed').count() and br.slider('scale_B').count(), timeout=20)
    except CheckFailed:
        br.shot('failure', full=True)
        out = page.locator('.jp-Cell').nth(1).locator('.jp-OutputArea').inner_text()
        raise CheckFailed('the explorer cell ran but no ipywidgets controls rendered: is the widget front end '
                          f'({WIDGETS_EXT}) installed and enabled? The cell shows: {out[:300]!r}')
    fig0 = br.wait('the explorer\'s figure', br.figure_src, timeout=20)
    lap('figure'); br.shot('2-figure')
    # 4a. type a seed into the seed slider's readout
    readout = br.slider('seed').locator('.widget-readout')
    readout.click(); page.keyboard.press('Control+A'); page.keyboard.type(str(SEED))
    t1 = time.time(); page.keyboard.press('Enter')
    fig1 = br.wait_new_figure(fig0, f'typing seed {SEED}')
    t['seed redraw'] = round(time.time() - t1, 2)
    lap('seed'); br.shot('3-seed')
    # 4b. drag scale_B's handle to about 80 % of its track
    sl = br.slider('scale_B')
    handle, track = sl.locator('.noUi-handle'), sl.locator('.noUi-base')
    hb, tb = handle.bounding_box(), track.bounding_box()
    page.mouse.move(hb['x'] + hb['width'] / 2, hb['y'] + hb['height'] / 2); page.mouse.down()
    page.mouse.move(tb['x'] + 0.8 * tb['width'], hb['y'] + hb['height'] / 2, steps=8)
    t1 = time.time(); page.mouse.up()
    br.wait_new_figure(fig1, 'dragging scale_B')
    t['speed redraw'] = round(time.time() - t1, 2)
    scale_b = float(sl.locator('.widget-readout').inner_text())
    lap('speed'); br.shot('4-speed')
    if doc_image: save_doc_image(page.locator('.widget-interact').first, doc_image)
    # 5. the widget's state, from the last cell
    last = page.locator('.jp-Cell').nth(n)  # cell 0 is markdown: code cells are 1..n
    count = br.state()['cells'][-1]['count']
    last.click(); page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-cell')")
    br.wait('the state cell to run again', lambda: (s := br.state()) and s['cells'][-1]['count'] != count and br.kernel_idle(s))
    text = last.locator('.jp-OutputArea-output').inner_text()
    try: state = json.loads(text)
    except json.JSONDecodeError: raise CheckFailed(f'the state cell printed no JSON: {text[:500]!r}')
    check_state(state, scale_b)
    lap('state'); br.shot('5-state', full=True)
    # 6. no errors
    if errs := br.errors_in_notebook(): raise CheckFailed(f'the notebook shows error output: {errs}')
    if br.page_errors: raise CheckFailed(f'uncaught JavaScript errors on the page: {br.page_errors}')
    if br.console_errors: raise CheckFailed(f'errors in the browser console: {br.console_errors}')
    return t


def save_doc_image(element, path: Path):
    "A picture of `element` for the docs, as a 256-colour PNG (about half the bytes, no visible difference)."
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    element.screenshot(path=str(path))
    Image.open(path).convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    log(f'wrote {path} ({path.stat().st_size // 1000} kB)')


def check_state(s: dict, scale_b: float):
    "The state printed by the kernel: the values set in the browser, this environment's Python, the plan `sample_plan` gives."
    import torch
    from pal.sampling import sample_plan
    kw = s['kwargs']
    fails = []
    if kw['seed'] != SEED: fails.append(f'seed is {kw["seed"]} in the kernel, {SEED} was typed in the browser')
    if abs(kw['scale_B'] - scale_b) > 1e-9: fails.append(f'scale_B is {kw["scale_B"]} in the kernel, the slider shows {scale_b}')
    if scale_b <= 1.0: fails.append(f'dragging scale_B right from 1.0 left it at {scale_b}')
    if Path(s['python']).resolve() != Path(sys.executable).resolve():
        fails.append(f'the kernel runs {s["python"]}, not this environment\'s {sys.executable}')
    plan = sample_plan(s['src_len'], tuple(s['bg_lens']), seed=kw['seed'], region_clips=kw['region_clips'],
                       scale=(kw['scale_B'], kw['scale_C']), position=(kw['position_B'], kw['position_C']))
    if plan.frame_idx.tolist() != s['frame_idx'] or plan.video_idx.tolist() != s['video_idx']:
        fails.append(f'the widget drew another plan than sample_plan gives for its values: {s["span"]} vs {plan.span}')
    if list(map(list, plan.span)) != s['span'] or list(plan.src_start) != s['src_start']:
        fails.append(f'span/src_start {s["span"]}/{s["src_start"]} vs sample_plan {plan.span}/{plan.src_start}')
    if fails: raise CheckFailed('the widget state is wrong:\n  ' + '\n  '.join(fails))
    log(f'widget state ok: seed {kw["seed"]}, scale_B {kw["scale_B"]}, spans {s["span"]}, source starts {s["src_start"]}, '
        f'{s["videos"]!r}, kernel {s["python"]}')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--artifacts', type=Path, default=ROOT / 'test-artifacts' / 'explorer')
    ap.add_argument('--without-widgets', action='store_true', help=f'disable {WIDGETS_EXT}: the check must fail')
    ap.add_argument('--doc-image', type=Path, help='also save a picture of the explorer here')
    ap.add_argument('--timeout', type=float, default=30, help='seconds for each wait in the browser (default 30)')
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / 'tools'))
    from check_docs import ensure_chromium, CHROMIUM, BROWSER_FLAGS  # offline on purpose: only the local server
    chromium = ensure_chromium(CHROMIUM)
    try: from playwright.sync_api import sync_playwright, Error as PlaywrightError
    except ImportError: sys.exit('FAIL: playwright is not installed; it is a dev requirement: bash tools/venv.sh dev')
    shutil.rmtree(a.artifacts, ignore_errors=True); a.artifacts.mkdir(parents=True)
    t0, lab, result = time.time(), None, None
    with tempfile.TemporaryDirectory(prefix='pal-explorer-') as tmp:
        try:
            lab = Lab(Path(tmp), a.without_widgets)
            import pal.sampling  # noqa: F401 (torch: imported while the server starts, for step 5)
            lab.wait_ready(60)
            log(f'JupyterLab up on port {lab.port} in {time.time() - t0:.1f} s')
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, args=BROWSER_FLAGS, headless=True)
                try:
                    page = browser.new_page(viewport=dict(width=1280, height=1000))
                    br = Browser(page, a.artifacts, a.timeout)
                    try: result = run_check(lab, br, a.doc_image)
                    except (CheckFailed, PlaywrightError) as e:
                        try: br.shot('failure', full=True)
                        except PlaywrightError: pass
                        if br.page_errors: e.args = (f'{e}\npage errors: {br.page_errors}',)
                        raise
                finally: browser.close()
        except (CheckFailed, PlaywrightError) as e:
            log(f'FAIL: {e}')
            if lab: (a.artifacts / 'server.log').write_text(lab.log_path.read_text(errors='replace'))
            result = None
        finally:
            if lab:
                t1 = time.time()
                log(f'server shut down ({lab.stop()}, {time.time() - t1:.1f} s)')
    if result is None:
        print(f'FAIL: the explorer check failed; screenshots and the server log are in {a.artifacts}')
        return 1
    log(f'ok in {time.time() - t0:.1f} s; seconds: ' + ', '.join(f'{k} {v}' for k, v in result.items())
        + f'; screenshots in {a.artifacts}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
