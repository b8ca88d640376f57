"The package's modules form layers: each imports cleanly on its own, and none imports (at module level or inside a function) one above it."
import ast, json, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PKG = Path(__file__).parents[1]/'mlsys'
# Lowest first. The architecture, not the reading order: `04a_model_files` sits below training (which saves with it), and serving
# sits above `09_deploy` and `10_monitor`, whose router and prediction log it hosts; its HTTP host (`server`) above it.
LAYERS = ['config', 'compare', 'world', 'validate', 'features', 'pit', 'parity', 'model_files', 'train', 'tune', 'evaluate', 'registry',
          'deploy', 'monitor', 'serve', 'server', 'retrain', 'loop', 'retrieval', 'pipeline', 'bench', 'cli', 'bench_serve']

def modules() -> list[str]: return sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_'))

def mlsys_imports(name:str) -> set[str]:
    "The `mlsys` modules that module `name` imports anywhere in its source."
    out = set()
    for n in ast.walk(ast.parse((PKG/f'{name}.py').read_text())):
        if isinstance(n, ast.ImportFrom) and n.level == 1: out |= {n.module.split('.')[0]} if n.module else {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and (n.module or '').startswith('mlsys.'): out.add(n.module.split('.')[1])
        elif isinstance(n, ast.Import): out |= {a.name.split('.')[1] for a in n.names if a.name.startswith('mlsys.')}
    return out - {name}

def test_every_module_has_a_layer():
    assert sorted(LAYERS) == modules(), 'place a new module in LAYERS'

def test_no_module_imports_one_above_it():
    up = {(m, d) for m in LAYERS for d in mlsys_imports(m) if LAYERS.index(d) > LAYERS.index(m)}
    assert up == set(), f'upward imports: {sorted(up)}'

def test_no_cycle_between_registry_train_and_serve():
    assert mlsys_imports('model_files') <= {'config'}
    assert 'serve' not in mlsys_imports('train') and 'registry' not in mlsys_imports('train') | mlsys_imports('model_files')

def _loaded_alone(name:str) -> tuple[str, list[str]]:
    "Import `mlsys.NAME` in a fresh interpreter; its error output (empty on success) and the `mlsys` modules it loaded."
    code = f"import sys, json, mlsys.{name}; print(json.dumps(sorted(m[6:] for m in sys.modules if m.startswith('mlsys.'))))"
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    return (p.stderr[-2000:] if p.returncode else ''), (json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else [])

def test_each_module_imports_alone():
    "In a fresh interpreter each module imports without error and loads no module above it (two interpreters at a time)."
    with ThreadPoolExecutor(2) as ex: got = dict(zip(LAYERS, ex.map(_loaded_alone, LAYERS)))
    assert {n: err for n, (err, _) in got.items() if err} == {}
    above = {n: sorted(m for m in loaded if m in LAYERS and LAYERS.index(m) > LAYERS.index(n)) for n, (_, loaded) in got.items()}
    assert {n: v for n, v in above.items() if v} == {}
