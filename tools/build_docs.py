"""Build the static documentation site `_docs/` from the notebooks, without Quarto.

Every notebook (nbs/index.ipynb first, then the course nbs/[0-9]*.ipynb, the appendices nbs/a[0-9]*.ipynb and the reference pages glossary/design; names starting with `_`
are skipped) is executed the way `nbdev_test` runs it: execnb's CaptureShell, cwd = nbs/, cells
flagged with a `tst_flags` flag (`#| slow`) or `#| eval: false` skipped. A skipped cell keeps the
outputs saved in the notebook, marked as such. Then nbconvert's `lab` template renders each
notebook to one HTML page with a navigation bar, prev/next links and, after each `#| export`
cell, the signature and docstring of every public name it defines (as nbdev's docs do).
Figures are embedded as base64. A cell that raises fails the build (the page is still written,
showing the traceback) and the message names the notebook and the cell.

Usage: python tools/build_docs.py [--out _docs] [--jobs 2] [--no-exec] [--only NAME ...]
Then open _docs/index.html, or check it with: python tools/check_docs.py
"""
from __future__ import annotations
import argparse, ast, html, json, os, re, shutil, subprocess, sys, tempfile, time, traceback
from dataclasses import dataclass, field, asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = '.pal-docs'  # marks a folder this script wrote, so it may be cleared safely
MATHJAX_URL = 'https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js'

# ---------------------------------------------------------------------------------------------
# Which notebooks, in which order

@dataclass
class Page:
    "One notebook and the HTML page made from it."
    stem: str   # notebook name without .ipynb, e.g. '03_paste'
    nb: str     # path of the notebook
    html: str   # file name of the page inside the docs folder
    title: str  # first `# heading` of the notebook

REFERENCE = ('glossary', 'design')  # reference pages, after the course and the appendices

def list_notebooks(nbs: Path) -> list[Path]:
    "index.ipynb, the course (nbs/[0-9]*.ipynb), the appendices (nbs/a[0-9]*.ipynb), then the reference pages; `_` names skipped."
    idx = nbs/'index.ipynb'
    course = sorted(nbs.glob('[0-9]*.ipynb'))
    appendices = sorted(nbs.glob('a[0-9]*.ipynb'))
    ref = [nbs/f'{n}.ipynb' for n in REFERENCE if (nbs/f'{n}.ipynb').exists()]
    return ([idx] if idx.exists() else []) + [p for p in course + appendices if not p.name.startswith('_')] + ref

def nb_title(path: Path) -> str:
    "The first level-1 markdown heading of a notebook, or its file name."
    nb = json.loads(path.read_text(encoding='utf-8'))
    for c in nb.get('cells', []):
        if c.get('cell_type') != 'markdown': continue
        src = ''.join(c.get('source', ''))
        if m := re.search(r'^#\s+(.+?)\s*#*\s*$', src, re.M): return m.group(1).strip()
    return path.stem

def make_pages(nbs: Path) -> list[Page]:
    return [Page(p.stem, str(p), 'index.html' if p.stem == 'index' else f'{p.stem}.html', nb_title(p))
            for p in list_notebooks(nbs)]

# ---------------------------------------------------------------------------------------------
# Directives, the nbdev way

def directives(src: str) -> tuple[dict[str, list[str]], str]:
    "Leading `#| key args` lines of a code cell as {key: args}, and the source without them."
    from nbdev.process import extract_directives
    from fastcore.basics import AttrDict
    cell = AttrDict(source=src, cell_type='code')
    d = extract_directives(cell, remove=True)
    # nbdev keeps Quarto-style lines (`#| echo: false`) for Quarto; the page shows none of them
    lines = cell.source.splitlines()
    while lines and re.match(r'\s*#\s*\|', lines[0]): lines.pop(0)
    return dict(d), '\n'.join(lines)

def is_skipped(src: str, d: dict, flags: set[str]) -> str | None:
    "Why `nbdev_test` would not run this code cell (None: it runs). Mirrors nbdev.test.test_nb."
    if 'nbdev_export' + '(' in src: return 'nbdev_export'
    if d.get('eval:', [''])[0].lower() == 'false': return 'eval: false'
    hit = flags & d.keys()
    return f'#| {sorted(hit)[0]}' if hit else None

# ---------------------------------------------------------------------------------------------
# Execution (in a worker process: one fresh IPython shell per notebook)

def _collapse_cr(text: str) -> str:
    "Keep what a terminal would show of progress bars: the text after the last \\r of a line."
    return '\n'.join(l.rsplit('\r', 1)[-1] for l in text.split('\n'))

def _joined(o: dict) -> dict:
    "An execnb output (text as a list of lines) in the form nbformat holds in memory (one string)."
    o = dict(o)
    if isinstance(o.get('text'), list): o['text'] = ''.join(o['text'])
    if 'data' in o: o['data'] = {k: ''.join(v) if isinstance(v, list) else v for k, v in o['data'].items()}
    return o

def execute(nb, nb_path: Path, flags: set[str], timeout: int | None) -> tuple[list, dict | None]:
    """Run the code cells of `nb` (nbformat node) in place, like nbdev_test. Returns
    (notes, error): notes[i] says why cell i was not run, error describes the cell that raised."""
    from execnb.shell import CaptureShell
    import nbformat
    notes = [None] * len(nb.cells)
    shell = CaptureShell(nb_path, mpl_format='png', timeout=timeout)  # png (not retina): pages stay light
    error = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != 'code': continue
        d, _ = directives(cell.source)
        why = is_skipped(cell.source, d, flags)
        if error is not None:
            notes[i] = 'after-error'; cell.outputs = []; continue
        if why:
            notes[i] = why; continue
        shell._cell_idx = i + 1
        try: outs = shell.run(cell.source)
        except TimeoutError: outs = None; shell.exc = TimeoutError(f'cell ran longer than {timeout} s')
        cell.outputs = [nbformat.from_dict(_joined(o)) for o in (outs or [])]
        if outs is None: cell.outputs = [nbformat.from_dict(dict(
            output_type='error', ename='TimeoutError', evalue=str(shell.exc), traceback=[str(shell.exc)]))]
        if shell.exc is not None:
            tb = ''.join(traceback.format_exception(type(shell.exc), shell.exc, shell.exc.__traceback__))
            error = dict(notebook=str(nb_path.relative_to(ROOT)) if nb_path.is_relative_to(ROOT) else str(nb_path),
                         cell=i + 1, source=cell.source[:400], traceback=tb[-3000:])
    return notes, error

# ---------------------------------------------------------------------------------------------
# Preparing cells for rendering

_def_types = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)

def _parse(src: str):
    "AST of a cell, IPython magics and shell lines blanked; None when it does not parse."
    lines = ['' if re.match(r'\s*[%!]', l) else l for l in src.splitlines()]
    try: return ast.parse('\n'.join(lines))
    except SyntaxError: return None

def _doc_names(src: str) -> list[str]:
    "Public names a cell defines, as show_doc would title them (`Cls.meth` for @patch)."
    tree = _parse(src)
    if tree is None: return []
    names = []
    for o in tree.body:
        if not isinstance(o, _def_types): continue
        if o.name.startswith('_') and not o.name.startswith('__'): continue
        decos = [getattr(x, 'id', getattr(x, 'attr', None)) for x in o.decorator_list]
        if 'patch' in decos and isinstance(o, (ast.FunctionDef, ast.AsyncFunctionDef)) and o.args.args:
            ann = o.args.args[0].annotation
            if isinstance(ann, ast.Name): names.append(f'{ann.id}.{o.name}'); continue
        names.append(o.name)
    return names

def api_doc(module: str, name: str) -> str:
    "Signature and docstring of `module.name` as markdown, rendered by nbdev's show_doc."
    import importlib
    from nbdev.showdoc import show_doc
    obj = importlib.import_module(module)
    for part in name.split('.'): obj = getattr(obj, part)
    return quarto_attrs(show_doc(obj, name=name)._repr_markdown_())

def quarto_attrs(md: str) -> str:
    "nbdev writes `[source](url){target=...}` for Quarto; make it a plain link floated right."
    return re.sub(r'\[source\]\(([^)\s]+)\)\{[^}]*\}',
                  lambda m: f'<a class="pal-source" href="{html.escape(m.group(1))}" target="_blank">source</a>', md)

_re_code = re.compile(r'(```.*?```|~~~.*?~~~|`[^`\n]*`)', re.S)
_re_math = re.compile(r'\$\$(.+?)\$\$|(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])', re.S)

def tex_img(tex: str, display: bool) -> str | None:
    "TeX math as an embedded SVG image (matplotlib mathtext), so formulas render offline; None if unsupported."
    import base64, io, matplotlib
    from matplotlib import mathtext
    from matplotlib.font_manager import FontProperties
    buf = io.BytesIO()
    try:
        with matplotlib.rc_context({'mathtext.fontset': 'cm', 'svg.fonttype': 'path', 'svg.hashsalt': 'pal'}):
            depth = mathtext.math_to_image(f'${tex.strip()}$', buf, prop=FontProperties(size=15 if display else 12.5),
                                           format='svg')
    except ValueError: return None  # mathtext does not know this TeX; MathJax (online) still renders it
    src = 'data:image/svg+xml;base64,' + base64.b64encode(buf.getvalue()).decode()
    alt = html.escape(tex.strip(), quote=True)
    if display: return f'<span class="pal-math-display"><img class="pal-math" alt="{alt}" src="{src}"></span>'
    return f'<img class="pal-math" alt="{alt}" src="{src}" style="vertical-align: -{depth:.1f}pt">'

def render_math(md: str) -> str:
    "Replace $...$ and $$...$$ outside code in a markdown cell by images of the formulas."
    parts = _re_code.split(md)
    for k in range(0, len(parts), 2):  # even parts are outside code
        parts[k] = _re_math.sub(lambda m: tex_img(m.group(1) or m.group(2), m.group(1) is not None) or m.group(0),
                                parts[k])
    return ''.join(parts)

def _ipynb_code_links(md: str, stems: set[str]) -> str:
    "Turn inline code `NN_name.ipynb` naming a built notebook into a link to its page."
    def sub(m):
        stem = m.group(2)
        return f'[`{m.group(1)}`]({stem}.html)' if stem in stems else m.group(0)
    return re.sub(r'(?<!\[)`((?:nbs/)?(\w[\w.-]*)\.ipynb)`(?!\])', sub, md)

def prepare(nb, notes: list, lib: str, default_mod: str | None, stems: set[str]) -> tuple[object, list[str]]:
    """Turn an executed notebook into what the page shows: hidden cells dropped, directives
    stripped, skipped cells marked, API docs added after exported cells. Returns (nb, problems)."""
    import nbformat
    from nbformat.v4 import new_markdown_cell, new_output
    problems = []
    shown = set()
    for c in nb.cells:
        if c.cell_type == 'code': shown |= set(re.findall(r'show_doc\(\s*([\w.]+)', c.source))
    cells = []
    for i, c in enumerate(nb.cells):
        if c.cell_type == 'markdown':
            c.source = render_math(_ipynb_code_links(c.source, stems)); cells.append(c); continue
        if c.cell_type != 'code': cells.append(c); continue
        d, body = directives(c.source)
        if 'hide' in d or 'default_exp' in d or d.get('include:', [''])[0].lower() == 'false': continue
        if 'exporti' in d and not body.strip(): continue
        body = '\n'.join(l for l in body.splitlines() if not re.search(r'#\|\s*hide_line\s*$', l))
        c.source = body.strip('\n')
        tags = list(c.metadata.get('tags', []))
        if d.get('echo:', [''])[0].lower() == 'false' or re.fullmatch(r'(\s*show_doc\(.*\)\s*)+', body, re.S):
            tags.append('pal-noinput')
            if 'show_doc' in body and 'pal-apidoc' not in tags and re.fullmatch(r'(\s*show_doc\(.*\)\s*)+', body, re.S):
                tags.append('pal-apidoc')
        if d.get('output:', [''])[0].lower() == 'false': c.outputs = []
        outs = []
        for o in c.get('outputs', []):
            if o.output_type == 'stream': o.text = _collapse_cr(o.text)
            data = o.get('data', {})
            if 'text/markdown' in data: data['text/markdown'] = quarto_attrs(data['text/markdown'])
            if 'application/vnd.jupyter.widget-view+json' in data:
                o = new_output('display_data', data={'text/plain':
                    '(interactive widget: open this notebook in Jupyter to use it)'})
            outs.append(o)
        c.outputs = outs
        why = notes[i]
        if why == 'after-error':
            c.outputs = [new_output('display_data', data={'text/html':
                '<div class="pal-note">(not executed: an earlier cell raised an error)</div>'})]
        elif why:
            kind = f'slow cell ({why})' if why.startswith('#|') else f'cell marked {why}'
            msg = (f'output saved from a full run; {kind} not re-executed' if c.outputs
                   else f'{kind}: not executed when the docs are built')
            c.outputs = [new_output('display_data', data={'text/html':
                f'<div class="pal-note">({html.escape(msg)})</div>'})] + list(c.outputs)
        if not c.source.strip() and not c.outputs: continue
        c.metadata['tags'] = tags
        cells.append(c)
        if set(d) & {'export', 'exports'} and 'hide' not in d:
            args = d.get('export', d.get('exports', []))
            mod = args[0] if args else default_mod
            if mod is None: problems.append(f'cell {i+1}: #| export without #| default_exp'); continue
            for name in _doc_names(body):
                if name in shown or name.split('.')[0] in shown: continue
                try: md = api_doc(f'{lib}.{mod}', name)
                except Exception as e:  # any failure to import or render is reported, never hidden
                    problems.append(f'cell {i+1}: no API doc for {lib}.{mod}.{name}: {type(e).__name__}: {e} '
                                    f'(run nbdev_export?)'); continue
                cells.append(new_markdown_cell(md, metadata={'tags': ['pal-apidoc']}))
    # the `# Title` cell opens the page, even when the imports cell comes first in the notebook
    first = next((j for j, c in enumerate(cells) if c.cell_type == 'markdown' and re.match(r'#\s', c.source)), None)
    if first:
        sub = first + 1 < len(cells) and cells[first+1].cell_type == 'markdown' and cells[first+1].source.startswith('>')
        head = cells[first:first + 1 + sub]
        del cells[first:first + 1 + sub]
        cells[:0] = head
    nb.cells = cells
    return nb, problems

# ---------------------------------------------------------------------------------------------
# Rendering

TEMPLATE = r"""
{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock -%}
{%- block jupyter_widgets -%}{%- endblock -%}
{%- block html_head_js_mermaidjs -%}{%- endblock -%}
{%- block notebook_css -%}
<link rel="stylesheet" href="assets/jupyterlab.css">
{%- endblock notebook_css -%}
{%- block html_head_js_mathjax -%}
{%- if resources.pal.math %}
<script>
window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\(', '\\)']], processEscapes: true}};
window.addEventListener('load', function () {  /* after load: an offline reader still gets the page */
  var s = document.createElement('script'); s.async = true; s.src = '{{ resources.pal.mathjax }}';
  document.head.appendChild(s);
});
</script>
{%- endif %}
{%- endblock html_head_js_mathjax -%}
{%- block html_head_css -%}
<link rel="icon" href="data:,">
<link rel="stylesheet" href="assets/pal.css">
{%- endblock html_head_css -%}
{%- block body_header -%}
<body class="pal-page" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<nav class="pal-nav" aria-label="notebooks">
<a class="pal-brand" href="index.html">{{ resources.pal.project }}</a>
<ol>
{%- for p in resources.pal.pages %}
<li{% if p.current %} class="pal-current"{% endif %}><a href="{{ p.html }}"{% if p.current %} aria-current="page"{% endif %}>{% if p.num %}<span class="pal-num">{{ p.num }}</span>{% endif %}<span>{{ p.title | e }}</span></a></li>
{%- endfor %}
</ol>
</nav>
<main class="jp-Notebook pal-main">
{%- endblock body_header -%}
{%- block body_footer -%}
<nav class="pal-prevnext" aria-label="previous and next">
{%- if resources.pal.prev %}<a class="pal-prev" href="{{ resources.pal.prev.html }}">&larr; {{ resources.pal.prev.title | e }}</a>{% else %}<span></span>{% endif %}
{%- if resources.pal.next %}<a class="pal-next" href="{{ resources.pal.next.html }}">{{ resources.pal.next.title | e }} &rarr;</a>{% endif %}
</nav>
<footer class="pal-footer">Rendered from <code>nbs/{{ resources.pal.nb_name }}</code>{{ resources.pal.footer }} by <code>tools/build_docs.py</code>.</footer>
</main>
</body>
{%- endblock body_footer -%}
{%- block error -%}
<div class="pal-cell-error">{{ super() }}</div>
{%- endblock error -%}
"""

PAL_CSS = """
/* the parts of nbconvert's lab template CSS that it inlines, plus the page layout */
a.anchor-link { display: none; }
.jp-InputArea { overflow: hidden; }
.jp-InputArea-editor { overflow-x: auto; }
.cm-editor.cm-s-jupyter .highlight pre { padding: var(--jp-code-padding) 4px; margin: 0;
  font-family: inherit; font-size: inherit; line-height: inherit; color: inherit; }
.jp-OutputArea-output pre { line-height: inherit; font-family: inherit; }
.jp-RenderedText pre { color: var(--jp-content-font-color1); font-size: var(--jp-code-font-size); }
.jp-Collapser { display: none; }

body.pal-page { margin: 0; background: #fff; display: grid; grid-template-columns: 15.5rem minmax(0, 1fr);
  min-height: 100vh; font-family: var(--jp-content-font-family); }
.pal-nav { position: sticky; top: 0; align-self: start; height: 100vh; overflow-y: auto; box-sizing: border-box;
  padding: 1rem 0.75rem; background: #f6f7f9; border-right: 1px solid #dde1e6; font-size: 14px; }
.pal-brand { display: block; font-weight: 700; font-size: 1.3rem; color: #1a1a1a; text-decoration: none;
  margin: 0 0.4rem 0.8rem; }
.pal-nav ol { list-style: none; margin: 0; padding: 0; }
.pal-nav li a { display: flex; padding: 0.3rem 0.45rem; border-radius: 4px; color: #24292f; text-decoration: none;
  line-height: 1.3; }
.pal-nav li a:hover { background: #e8ebef; }
.pal-nav li.pal-current a { background: #1f6feb; color: #fff; font-weight: 600; }
.pal-num { flex: none; width: 2.3em; color: #6b7280; font-variant-numeric: tabular-nums; }
.pal-nav li.pal-current .pal-num { color: #dbe7ff; }
main.pal-main { max-width: 62rem; padding: 1.5rem 2rem 2rem; box-sizing: border-box; }
.jp-InputPrompt, .jp-OutputPrompt { display: none !important; }
.jp-Cell { padding: 2px 0; }
.celltag_pal-noinput .jp-Cell-inputWrapper { display: none; }
.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"] { background: #fbf7ec; }
.jp-RenderedHTMLCommon a code, .jp-RenderedHTMLCommon a { color: #1f6feb; }
.pal-math-display { display: block; text-align: center; margin: 0.8rem 0; }
.pal-note { color: #6b7280; font-style: italic; font-size: 13px; margin: 2px 0; }
.celltag_pal-apidoc { border-left: 3px solid #1f6feb; background: #f6f8fb; padding: 0.1rem 1rem 0.4rem;
  margin: 0.4rem 0 0.8rem; }
.celltag_pal-apidoc hr { display: none; }
.celltag_pal-apidoc h3 { font-family: var(--jp-code-font-family); font-size: 1.05rem; margin-top: 0.6rem; }
.pal-cell-error { border-left: 4px solid #d1242f; background: #fff5f5; }
.jp-RenderedImage img, .jp-OutputArea-output img { max-width: 100%; height: auto; }
.pal-prevnext { display: flex; justify-content: space-between; gap: 1rem; margin: 2.5rem 0 0.5rem;
  padding-top: 1rem; border-top: 1px solid #dde1e6; }
.pal-prevnext a { color: #1f6feb; text-decoration: none; font-weight: 600; }
.pal-source { float: right; font-size: smaller; }
.pal-footer { color: #6b7280; font-size: 12px; margin-top: 1rem; }
@media (max-width: 55rem) {
  body.pal-page { display: block; }
  .pal-nav { position: static; height: auto; border-right: 0; border-bottom: 1px solid #dde1e6; }
  .pal-nav ol { display: flex; flex-wrap: wrap; gap: 0.2rem; }
  main.pal-main { padding: 1rem; }
}
"""

def _slug(text: str) -> str:
    "GitHub/Quarto-style anchor: lower case, punctuation dropped, spaces to dashes."
    s = re.sub(r'<[^>]+>', '', html.unescape(text)).strip().lower()
    s = re.sub(r'[^\w\- ]', '', s)
    return re.sub(r'\s', '-', s)

def postprocess(body: str, stems: set[str]) -> str:
    "Links to notebooks point at their pages; headings also answer to GitHub-style anchors."
    def href(m):
        path, stem, frag = m.group(2), m.group(3), m.group(4) or ''
        if stem not in stems or re.match(r'[a-z]+:', path): return m.group(0)
        return f'{m.group(1)}{"index" if stem == "index" else stem}.html{frag}"'
    body = re.sub(r'(href=")((?:\.\./|\./|nbs/)*(?:[\w.-]+/)*?([\w.-]+)\.ipynb)(#[^"]*)?"', href, body)
    ids = set(re.findall(r'\bid="([^"]+)"', body))
    def heading(m):
        slug = _slug(m.group(3))
        if not slug or slug in ids: return m.group(0)
        ids.add(slug)
        return f'{m.group(1)}<span id="{slug}"></span>{m.group(3)}'
    return re.sub(r'(<h([1-6]) id="[^"]*">)(.*?)(?=</h\2>)', heading, body, flags=re.S)

def _lab_static() -> Path:
    from nbconvert.exporters import HTMLExporter
    for p in HTMLExporter(template_name='lab').template_paths:
        if (Path(p)/'static'/'index.css').exists(): return Path(p)/'static'
    raise FileNotFoundError('nbconvert lab template CSS (lab/static/index.css) not found; reinstall nbconvert')

def write_assets(out: Path):
    static = _lab_static()
    (out/'assets').mkdir(parents=True, exist_ok=True)
    css = (static/'index.css').read_text(encoding='utf-8') + '\n' + (static/'theme-light.css').read_text(encoding='utf-8')
    (out/'assets'/'jupyterlab.css').write_text(css, encoding='utf-8')
    (out/'assets'/'pal.css').write_text(PAL_CSS, encoding='utf-8')
    (out/'.nojekyll').write_text('')

def render(nb, page: Page, pages: list[Page], out: Path, project: str, footer: str) -> str:
    "Render one prepared notebook to out/page.html; returns the HTML."
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    ex = HTMLExporter(template_name='lab', extra_loaders=[DictLoader({'pal.html.j2': TEMPLATE})],
                      exclude_input_prompt=True, exclude_output_prompt=True)
    ex.template_file = 'pal.html.j2'
    i = [p.stem for p in pages].index(page.stem)
    math = any(c.cell_type == 'markdown' and re.search(r'\$[^$\n]+\$|\\\(|\\\[|\$\$', c.source) for c in nb.cells)
    nav = [dict(html=p.html, title=('Home' if p.stem == 'index' else p.title), current=p.stem == page.stem,
                num=(m.group(1) if (m := re.match(r'(\d+[a-z]?)_', p.stem)) else '')) for p in pages]
    res = {'metadata': {'name': f'{page.title} | {project}' if page.stem != 'index' else project},
           'pal': dict(project=project, pages=nav, math=math, mathjax=MATHJAX_URL, nb_name=Path(page.nb).name,
                       prev=nav[i-1] if i > 0 else None, next=nav[i+1] if i + 1 < len(pages) else None,
                       footer=footer)}
    body, _ = ex.from_notebook_node(nb, resources=res)
    body = postprocess(body, {p.stem for p in pages})
    (out/page.html).write_text(body, encoding='utf-8')
    return body

def copy_local_images(body: str, nbs: Path, out: Path) -> list[str]:
    "Copy images that markdown references by relative path (e.g. images/x.png) next to the page."
    missing = []
    for src in set(re.findall(r'<img[^>]*?\ssrc="([^"]+)"', body)):
        if re.match(r'[a-z]+:|//|#', src): continue
        rel = Path(html.unescape(src).split('?')[0].split('#')[0])
        if rel.is_absolute() or '..' in rel.parts: missing.append(src); continue
        if (nbs/rel).is_file():
            (out/rel).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(nbs/rel, out/rel)
        else: missing.append(src)
    return missing

# ---------------------------------------------------------------------------------------------
# One notebook, end to end (runs in a worker process)

@dataclass
class Result:
    stem: str
    seconds: float = 0.0
    executed: int = 0
    skipped: int = 0
    figures: int = 0
    api_docs: int = 0
    error: dict | None = None
    problems: list = field(default_factory=list)

def build_page(page: Page, pages: list[Page], out: str, run: bool, timeout: int | None, footer: str) -> Result:
    import nbformat
    t0 = time.time()
    out, nb_path = Path(out), Path(page.nb)
    res = Result(page.stem)
    os.chdir(nb_path.parent)  # notebooks run with cwd = nbs/, as under nbdev_test
    from nbdev.config import get_config
    cfg = get_config()
    flags = set(cfg.get('tst_flags', '').split())
    nb = nbformat.read(nb_path, as_version=4)
    if run: notes, res.error = execute(nb, nb_path, flags, timeout)
    else: notes = [None] * len(nb.cells)
    code = [n for c, n in zip(nb.cells, notes) if c.cell_type == 'code']
    res.executed = sum(n is None for n in code) if run else 0
    res.skipped = sum(n not in (None, 'after-error') for n in code)
    default_mod = None
    for c in nb.cells:
        if c.cell_type == 'code' and (m := re.search(r'^#\|\s*default_exp\s+(\S+)', c.source, re.M)):
            default_mod = m.group(1); break
    nb, res.problems = prepare(nb, notes, cfg.lib_name, default_mod, {p.stem for p in pages})
    res.api_docs = sum('pal-apidoc' in c.metadata.get('tags', []) for c in nb.cells)
    res.figures = sum(1 for c in nb.cells for o in c.get('outputs', [])
                      if any(k.startswith('image/') for k in o.get('data', {})))
    body = render(nb, page, pages, out, cfg.get('title', cfg.lib_name), footer)
    res.problems += [f'image not found: {s}' for s in copy_local_images(body, nb_path.parent, out)]
    res.seconds = time.time() - t0
    return res

def worker(spec_file: str, stem: str, result_file: str):
    "Build one page in this (fresh) process and write its Result as JSON."
    spec = json.loads(Path(spec_file).read_text())
    pages = [Page(**p) for p in spec['pages']]
    page = next(p for p in pages if p.stem == stem)
    try: r = build_page(page, pages, spec['out'], spec['run'], spec['timeout'], spec['footer'])
    except Exception:  # reported with its traceback, never swallowed
        r = Result(stem, problems=['build failed:\n' + traceback.format_exc()])
    Path(result_file).write_text(json.dumps(asdict(r)))

def run_workers(todo: list[Page], pages: list[Page], out: Path, run: bool, timeout: int, footer: str,
                jobs: int, report) -> list[Result]:
    """Build each page in its own Python process (a fresh shell per notebook, as nbdev_test gives),
    `jobs` at a time; call report(page, result) as each one ends."""
    tmp = Path(tempfile.mkdtemp(prefix='pal-docs-'))
    try:
        spec = tmp/'spec.json'
        spec.write_text(json.dumps(dict(pages=[asdict(p) for p in pages], out=str(out), run=run,
                                        timeout=timeout, footer=footer)))
        pending, running, results = list(todo), {}, {}
        while pending or running:
            while pending and len(running) < jobs:
                p = pending.pop(0)
                log = open(tmp/f'{p.stem}.log', 'w+')
                proc = subprocess.Popen([sys.executable, __file__, '--worker', p.stem, '--spec', str(spec),
                                         '--result', str(tmp/f'{p.stem}.json')], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=p.nb and Path(p.nb).parent)
                running[p.stem] = (p, proc, log, time.time())
            time.sleep(0.2)
            for stem, (p, proc, log, t0) in list(running.items()):
                if proc.poll() is None: continue
                del running[stem]
                rf = tmp/f'{stem}.json'
                if rf.exists(): r = Result(**json.loads(rf.read_text()))
                else:
                    log.seek(0)
                    r = Result(stem, seconds=time.time() - t0, problems=[
                        f'worker process exited {proc.returncode} without a result; its output ends:\n{log.read()[-3000:]}'])
                log.close()
                results[stem] = r
                report(p, r)
        return [results[p.stem] for p in todo]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

# ---------------------------------------------------------------------------------------------

def _footer() -> str:
    try:
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError): rev = ''
    return f' at commit <code>{rev}</code>' if rev else ''

def prepare_out(out: Path, full: bool):
    "Create the output folder; a full build clears an old one, if this script wrote it."
    if out.exists() and full:
        if any(out.iterdir()) and not (out/MARKER).exists():
            sys.exit(f'{out} exists and was not written by tools/build_docs.py; remove it or pass another --out')
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out/MARKER).write_text('written by tools/build_docs.py; safe to delete\n')

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=str(ROOT/'_docs'), help='output folder (default: _docs/)')
    ap.add_argument('--nbs', default=str(ROOT/'nbs'), help='notebook folder (default: nbs/)')
    ap.add_argument('--jobs', type=int, default=min(2, os.cpu_count() or 1), help='notebooks executed at once')
    ap.add_argument('--no-exec', action='store_true', help='render the outputs saved in the notebooks, run nothing')
    ap.add_argument('--only', nargs='+', metavar='NAME', help='build only these pages (e.g. 03_paste); keeps the rest')
    ap.add_argument('--timeout', type=int, default=1800, help='seconds one cell may run (default 1800)')
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    ap.add_argument('--spec', help=argparse.SUPPRESS)
    ap.add_argument('--result', help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker: worker(a.spec, a.worker, a.result); return 0
    t0 = time.time()
    out, nbs = Path(a.out).resolve(), Path(a.nbs).resolve()
    pages = make_pages(nbs)
    if not pages: print(f'no notebooks in {nbs}', file=sys.stderr); return 1
    todo = pages
    if a.only:
        want = {Path(n).stem for n in a.only}
        unknown = want - {p.stem for p in pages}
        if unknown: print(f'--only: no such notebook(s) in {nbs}: {sorted(unknown)}', file=sys.stderr); return 1
        todo = [p for p in pages if p.stem in want]
    prepare_out(out, full=not a.only)
    write_assets(out)
    footer = _footer()
    os.environ.setdefault('PYTHONHASHSEED', '0')
    print(f'[docs] {"rendering" if a.no_exec else "executing and rendering"} {len(todo)} notebook(s) '
          f'into {out} ({a.jobs} at a time)', flush=True)
    def report(p, r):
        state = 'FAIL' if (r.error or r.problems) else 'ok'
        print(f'[docs] {state:4} {p.html:28} {r.seconds:6.1f} s  {r.executed:3} cells run, {r.skipped} skipped, '
              f'{r.figures} figure outputs, {r.api_docs} API doc blocks', flush=True)
    results = run_workers(todo, pages, out, not a.no_exec, a.timeout, footer, max(1, a.jobs), report)
    failed = False
    for p, r in zip(todo, results):
        if r.error:
            failed = True
            e = r.error
            print(f'\nFAIL: {e["notebook"]}, cell {e["cell"]} raised an error. The cell:\n'
                  + '\n'.join('    ' + l for l in e['source'].splitlines()[:12])
                  + '\n' + e['traceback'], file=sys.stderr)
        for msg in r.problems:
            failed = True
            print(f'\nFAIL: {p.nb}: {msg}', file=sys.stderr)
    (out/'build.json').write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(f'[docs] {"FAILED" if failed else "built"} {len(todo)} page(s) in {time.time()-t0:.0f} s: '
          f'open {out/"index.html"}', flush=True)
    return 1 if failed else 0

if __name__ == '__main__':
    sys.exit(main())
