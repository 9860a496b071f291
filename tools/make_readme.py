"""Render README.md from nbs/index.ipynb without Quarto: drop `#| hide` cells, strip nbdev
directives, keep outputs (figures go to README_files/). Usage: python tools/make_readme.py [OUT_DIR]"""
import re, sys
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter
from nbconvert.preprocessors import TagRemovePreprocessor

root = Path(__file__).resolve().parent.parent
out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else root

nb = nbformat.read(root/'nbs'/'index.ipynb', as_version=4)
cells = []
for c in nb.cells:
    src = c.source
    if c.cell_type == 'code':
        lines = src.splitlines()
        flags = [l for l in lines if re.match(r'^\s*#\|', l)]
        if any(re.match(r'^\s*#\|\s*(hide|exporti?|default_exp)\b', l) for l in flags): continue
        c.source = '\n'.join(l for l in lines if not re.match(r'^\s*#\|', l)).strip()
        if any(re.match(r'^\s*#\|\s*echo:\s*false', l) for l in flags):
            c.metadata.setdefault('tags', []).append('remove_input')
        c.outputs = [o for o in c.get('outputs', []) if o.get('output_type') != 'stream' or c.source]
    cells.append(c)
nb.cells = cells
exporter = MarkdownExporter()
exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={'remove_input'}), enabled=True)
body, res = exporter.from_notebook_node(nb, resources={'output_files_dir': 'README_files'})
body = re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'
body = re.sub(r'\]\(([\w.-]+\.ipynb(?:#[\w-]*)?)\)', r'](nbs/\1)', body)  # notebook links work from the repository root
(out_dir/'README.md').write_text(body, encoding='utf-8')
files = res.get('outputs', {})
if files: (out_dir/'README_files').mkdir(exist_ok=True)
for name in sorted(files): (out_dir/name).write_bytes(files[name])
print(f"wrote {out_dir/'README.md'} and {len(files)} figure(s)")
