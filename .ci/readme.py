"""Write README.md from nbs/index.ipynb (nbdev's own README step needs Quarto). `--check` fails when they differ."""
import re, sys
from pathlib import Path
import nbformat

root = Path(__file__).resolve().parent.parent
HEADER = '<!-- Generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file. -->\n\n'

def render() -> str:
    nb = nbformat.read(root/'nbs'/'index.ipynb', as_version=4)
    parts = []
    for c in nb.cells:
        src = c.source.strip()
        if c.cell_type == 'code':
            if re.search(r'^#\|\s*(hide|export)', src, re.M): continue
            src = '```python\n' + '\n'.join(l for l in src.splitlines() if not l.startswith('#|')) + '\n```'
        parts.append(src)
    return HEADER + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    text, readme = render(), root/'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit('README.md is out of sync with nbs/index.ipynb: run `make readme` and commit the result.')
    else: readme.write_text(text)
