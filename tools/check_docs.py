"""Check the built docs site (`_docs/`, from tools/build_docs.py) in headless Chromium.

Fails on: a notebook without a page, a page not reachable from index.html, a broken internal
link or anchor, a page that does not load (HTTP error, timeout, JavaScript exception, a request
to the local server that fails), an image that does not render (naturalWidth 0), or a notebook
cell that raised an error. Saves screenshots of index.html and 03_paste.html (top of page and
full page) and a JSON report to test-artifacts/docs/.

Chromium: /usr/bin/chromium (Debian package `chromium`); when it is missing and we run as root it
is installed with apt-get, non-interactively. Pages are served from 127.0.0.1 on a free port and
every other host name fails to resolve, so the check is the same with or without a network.

Usage: python tools/check_docs.py [--docs _docs] [--artifacts test-artifacts/docs]
"""
from __future__ import annotations
import argparse, base64, functools, json, os, re, subprocess, sys, tempfile, threading, time
import urllib.parse, urllib.request
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = '/usr/bin/chromium'
BROWSER_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--disable-quic',
                 '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',  # offline on purpose: no CDN, no surprises
                 '--disable-dev-shm-usage',  # containers often have a tiny /dev/shm
                 '--mute-audio']  # every headless Chromium of `make test` (tools/check_explorer.py too)
FLAGS = BROWSER_FLAGS + ['--hide-scrollbars', '--window-size=1280,1000']
SCREENSHOTS = ['index', '03_paste']  # pages whose screenshots are kept as test artifacts

# ---------------------------------------------------------------------------------------------
# Static checks: every notebook has a page; links and anchors resolve; every page is reachable

class _Links(HTMLParser):
    "Collects ids and the href/src of links, images and stylesheets of one page."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.refs = set(), []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'a' and a.get('name'): self.ids.add(a['name'])
        for key in ('href', 'src'):
            if a.get(key) is not None and tag in ('a', 'img', 'link', 'script', 'source', 'iframe'):
                self.refs.append((tag, a[key]))

def _internal(ref: str) -> bool:
    return not re.match(r'[a-zA-Z][a-zA-Z0-9+.-]*:|//', ref)

def static_check(docs: Path, nbs: Path) -> tuple[list[str], list[str]]:
    "Returns (failures, pages) for the site in `docs`, pages in nav order when possible."
    fails = []
    sys.path.insert(0, str(ROOT/'tools'))
    from build_docs import list_notebooks
    expected = ['index.html' if p.stem == 'index' else f'{p.stem}.html' for p in list_notebooks(nbs)]
    for name in expected:
        if not (docs/name).is_file(): fails.append(f'{name}: missing; nbs/ has its notebook (rebuild: make docs)')
    pages = [p.name for p in sorted(docs.glob('*.html'))]
    pages = [p for p in expected if p in pages] + [p for p in pages if p not in expected]
    parsed = {}
    for name in pages:
        p = _Links(); p.feed((docs/name).read_text(encoding='utf-8')); parsed[name] = p
    graph = {}
    for name, p in parsed.items():
        graph[name] = set()
        for tag, ref in p.refs:
            if not _internal(ref) or ref.startswith('data:'): continue
            url = urllib.parse.urlsplit(ref)
            path = urllib.parse.unquote(url.path)
            target = name if not path else os.path.normpath(os.path.join(os.path.dirname(name), path))
            if target.startswith('..') or os.path.isabs(target):
                fails.append(f'{name}: link leaves the site: <{tag}> {ref}'); continue
            if not (docs/target).is_file():
                fails.append(f'{name}: broken link <{tag}> {ref} ({target} does not exist)'); continue
            if target.endswith('.html'):
                graph[name].add(target)
                if url.fragment and target in parsed and urllib.parse.unquote(url.fragment) not in {urllib.parse.unquote(i) for i in parsed[target].ids}:
                    fails.append(f'{name}: broken anchor <{tag}> {ref} (no id "{url.fragment}" in {target})')
    if 'index.html' in graph:  # everything reachable from the index page
        seen, todo = {'index.html'}, ['index.html']
        while todo:
            for t in graph.get(todo.pop(), ()):
                if t not in seen: seen.add(t); todo.append(t)
        fails += [f'{n}: not reachable by links from index.html' for n in pages if n not in seen]
    return fails, pages

# ---------------------------------------------------------------------------------------------
# Chromium

def ensure_chromium(path: str) -> str:
    "Path of a Chromium binary; installs Debian's `chromium` with apt-get when missing (root only)."
    if os.access(path, os.X_OK): return path
    if path != CHROMIUM: sys.exit(f'FAIL: no Chromium at {path}')
    if os.geteuid() != 0:
        sys.exit(f'FAIL: {CHROMIUM} is missing and this is not root; install it: sudo apt-get install -y chromium')
    print('[docs-check] installing chromium with apt-get (first time only)', flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    for cmd in (['apt-get', 'update', '-q'],
                ['apt-get', 'install', '-y', '-q', '-o', 'Dpkg::Options::=--force-confold', 'chromium']):
        r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode: sys.exit(f'FAIL: {" ".join(cmd)} exited {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}')
    if not os.access(path, os.X_OK): sys.exit(f'FAIL: apt-get installed chromium but {path} is not there')
    return path

class _Quiet(SimpleHTTPRequestHandler):
    "Serves the docs folder; remembers requests that failed instead of logging every request."
    failed: list
    def log_message(self, fmt, *args): pass
    def log_error(self, fmt, *args): self.failed.append(self.path + ': ' + (fmt % args))

def serve(docs: Path) -> tuple[ThreadingHTTPServer, list]:
    failed = []
    handler = type('H', (_Quiet,), {'failed': failed})
    srv = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(handler, directory=str(docs)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, failed

class CDP:
    "A minimal DevTools protocol client for one page target (websocket-client, a jupyter dependency)."
    def __init__(self, ws_url: str):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True, enable_multithread=True)
        self.n, self.events = 0, []
    def send(self, method: str, timeout: float = 60, **params) -> dict:
        self.n += 1
        me = self.n
        self.ws.send(json.dumps(dict(id=me, method=method, params=params)))
        end = time.time() + timeout
        while time.time() < end:
            self.ws.settimeout(max(0.1, end - time.time()))
            msg = json.loads(self.ws.recv())
            if msg.get('id') == me:
                if 'error' in msg: raise RuntimeError(f'{method}: {msg["error"]}')
                return msg.get('result', {})
            if 'method' in msg: self.events.append(msg)
        raise TimeoutError(f'{method}: no answer in {timeout} s')
    def wait_event(self, name: str, timeout: float) -> dict | None:
        "Wait for the next event called `name`; earlier events stay in self.events."
        end = time.time() + timeout
        for i, e in enumerate(self.events):
            if e['method'] == name: return self.events.pop(i)
        import websocket
        while time.time() < end:
            self.ws.settimeout(max(0.1, end - time.time()))
            try: msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException: break
            if msg.get('method') == name: return msg
            if 'method' in msg: self.events.append(msg)
        return None
    def close(self): self.ws.close()

def start_chromium(binary: str, profile: str) -> tuple[subprocess.Popen, str]:
    "Start headless Chromium with a DevTools port; returns (process, websocket URL of its page)."
    proc = subprocess.Popen([binary, *FLAGS, f'--user-data-dir={profile}', '--remote-debugging-port=0', 'about:blank'],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    port_file, end = Path(profile)/'DevToolsActivePort', time.time() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None:
            sys.exit(f'FAIL: chromium exited {proc.returncode} at start:\n{proc.stderr.read().decode()[-3000:]}')
        if time.time() > end: stop(proc); sys.exit('FAIL: chromium did not open its DevTools port in 60 s')
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    for _ in range(100):
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=5) as r: targets = json.load(r)
            pages = [t for t in targets if t.get('type') == 'page']
            if pages: return proc, pages[0]['webSocketDebuggerUrl']
        except OSError: pass
        time.sleep(0.1)
    stop(proc); sys.exit('FAIL: chromium has no page target')

def stop(proc: subprocess.Popen):
    "End the Chromium we started (its own process group, by id)."
    if proc.poll() is None:
        try: os.killpg(proc.pid, 15); proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try: os.killpg(proc.pid, 9)
            except ProcessLookupError: pass
    if proc.stderr: proc.stderr.close()

PAGE_JS = r"""(() => {
  const imgs = [...document.images];
  return {
    title: document.title,
    images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => (i.currentSrc || i.src).slice(0, 100)),
    errors: [...document.querySelectorAll('.pal-cell-error')].map(e => e.innerText.slice(0, 400)),
    nav: document.querySelectorAll('nav.pal-nav a').length,
    chars: document.body ? document.body.innerText.length : 0,
    height: Math.ceil(document.documentElement.scrollHeight),
  };
})()"""

def check_page(cdp: CDP, url: str, name: str, timeout: float) -> tuple[dict, list[str]]:
    "Load one page and look at it; returns (facts, failures)."
    fails, t0 = [], time.time()
    cdp.events.clear()
    nav = cdp.send('Page.navigate', url=url)
    if nav.get('errorText'): return {}, [f'{name}: does not load: {nav["errorText"]}']
    if cdp.wait_event('Page.loadEventFired', timeout) is None:
        return {}, [f'{name}: load event not fired within {timeout} s']
    time.sleep(0.2)  # let load handlers run
    r = cdp.send('Runtime.evaluate', expression=PAGE_JS, returnByValue=True)
    facts = r.get('result', {}).get('value') or {}
    facts['seconds'] = round(time.time() - t0, 2)
    for e in cdp.events:
        m, p = e['method'], e.get('params', {})
        if m == 'Network.responseReceived' and p.get('type') == 'Document' and p['response']['status'] >= 400:
            fails.append(f'{name}: HTTP {p["response"]["status"]} for {p["response"]["url"]}')
        if m == 'Network.loadingFailed' and not p.get('canceled'):
            req = next((x['params']['request']['url'] for x in cdp.events if x['method'] == 'Network.requestWillBeSent'
                        and x['params']['requestId'] == p['requestId']), '?')
            if req.startswith('http://127.0.0.1'): fails.append(f'{name}: request failed: {req} ({p.get("errorText")})')
            else: facts.setdefault('external_blocked', []).append(req)
        if m == 'Runtime.exceptionThrown':
            d = p.get('exceptionDetails', {})
            fails.append(f'{name}: JavaScript error: {d.get("exception", {}).get("description") or d.get("text")}')
    if not facts: fails.append(f'{name}: could not read the page')
    if facts.get('nav', 0) == 0: fails.append(f'{name}: no navigation bar (nav.pal-nav)')
    if facts.get('chars', 0) < 50: fails.append(f'{name}: page is (nearly) empty')
    for src in facts.get('broken', []):
        why = '' if src.startswith(('data:', 'http://127.0.0.1')) else \
            ' (an external image: the check runs offline; embed the figure in the notebook instead)'
        fails.append(f'{name}: image does not render (naturalWidth 0): {src}{why}')
    for err in facts.get('errors', []): fails.append(f'{name}: a notebook cell raised an error:\n    ' + err.replace('\n', '\n    '))
    return facts, fails

def screenshot(cdp: CDP, out: Path, full_height: int | None = None):
    "PNG of the viewport, or of the whole page (`full_height` pixels; shrunk to at most 16000 pixels high)."
    params = dict(format='png')
    if full_height:
        params.update(captureBeyondViewport=True,
                      clip=dict(x=0, y=0, width=1280, height=full_height, scale=min(1, 16000 / full_height)))
    out.write_bytes(base64.b64decode(cdp.send('Page.captureScreenshot', timeout=120, **params)['data']))

# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--docs', default=str(ROOT/'_docs'), help='built site (default: _docs/)')
    ap.add_argument('--nbs', default=str(ROOT/'nbs'), help='notebooks that must have a page (default: nbs/)')
    ap.add_argument('--artifacts', default=str(ROOT/'test-artifacts'/'docs'), help='screenshots and report go here')
    ap.add_argument('--chromium', default=CHROMIUM, help=f'browser binary (default {CHROMIUM})')
    ap.add_argument('--screenshots', nargs='*', default=SCREENSHOTS, metavar='NAME',
                    help=f'pages to photograph (default: {" ".join(SCREENSHOTS)})')
    ap.add_argument('--timeout', type=float, default=30, help='seconds a page may take to load')
    a = ap.parse_args(argv)
    t0 = time.time()
    docs, art = Path(a.docs).resolve(), Path(a.artifacts).resolve()
    if not (docs/'index.html').is_file():
        print(f'FAIL: {docs/"index.html"} does not exist; build the docs first: make docs', file=sys.stderr); return 1
    art.mkdir(parents=True, exist_ok=True)
    for old in art.glob('*.png'): old.unlink()
    fails, pages = static_check(docs, Path(a.nbs).resolve())
    binary = ensure_chromium(a.chromium)
    srv, served_failed = serve(docs)
    base = f'http://127.0.0.1:{srv.server_address[1]}/'
    report = {}
    with tempfile.TemporaryDirectory(prefix='pal-chromium-') as profile:
        proc, ws = start_chromium(binary, profile)
        try:
            cdp = CDP(ws)
            for dom in ('Page', 'Runtime', 'Network'): cdp.send(f'{dom}.enable')
            cdp.send('Emulation.setDeviceMetricsOverride', width=1280, height=900, deviceScaleFactor=1, mobile=False)
            for name in pages:
                facts, f = check_page(cdp, base + name, name, a.timeout)
                report[name] = dict(facts, failures=f)
                fails += f
                stem = name[:-5]
                if stem in a.screenshots and facts:
                    screenshot(cdp, art/f'{stem}.png')
                    screenshot(cdp, art/f'{stem}-full.png', facts.get('height'))
                print(f'[docs-check] {"FAIL" if f else "ok":4} {name:28} {facts.get("images", 0):3} images, '
                      f'{len(facts.get("broken", []))} broken, {len(facts.get("errors", []))} cell errors '
                      f'({facts.get("seconds", 0):.1f} s)', flush=True)
            cdp.close()
        finally:
            stop(proc)
            srv.shutdown()
    fails += [f'server: failed request {x}' for x in served_failed]
    shots = sorted(p.name for p in art.glob('*.png'))
    (art/'report.json').write_text(json.dumps(dict(pages=report, failures=fails, screenshots=shots), indent=1))
    for f in fails: print('FAIL: ' + f, file=sys.stderr)
    print(f'[docs-check] {"FAILED" if fails else "passed"}: {len(pages)} pages, {len(fails)} problem(s), '
          f'{time.time()-t0:.0f} s; screenshots in {art}: {", ".join(shots) or "none"}', flush=True)
    return 1 if fails else 0

if __name__ == '__main__':
    sys.exit(main())
