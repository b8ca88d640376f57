"The package's modules form layers: each imports cleanly on its own, and none imports (at module level or inside a function) one above it."
import ast, json, subprocess, sys
from pathlib import Path

PKG = Path(__file__).parents[1]/'mlsys'
# Lowest first. The architecture, not the reading order: `04a_model_files` sits below training (which saves with it), and serving
# sits above `09_deploy` and `10_monitor`, whose router and prediction log it hosts; its HTTP host (`server`) above it.
LAYERS = ['config', 'compare', 'world', 'validate', 'features', 'pit', 'parity', 'model_files', 'train', 'tune', 'evaluate', 'registry',
          'deploy', 'monitor', 'serve', 'server', 'retrain', 'loop', 'retrieval', 'recsys', 'ranking', 'recommend', 'feedback',
          'fraud', 'graph', 'explain', 'defence', 'capacity', 'llm', 'kv_serving', 'llm_serve', 'llm_tune', 'rag',
          'rag_guard', 'rag_answer', 'rag_serve',
          'pipeline', 'bench', 'cli', 'bench_serve', 'site']

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

# Third-party packages the modules import, loaded once in a parent interpreter that then forks a child per module: each child starts
# with no `mlsys` module loaded, so what the test proves about the package is unchanged, without paying torch's import 23 times.
DEPS = ['numpy', 'pandas', 'pyarrow', 'scipy', 'sklearn', 'torch', 'lightning', 'torchmetrics', 'fastapi', 'pydantic', 'yaml', 'pandera',
        'optuna']
_FORKS = r"""
import importlib, json, os, sys, traceback
for dep in sys.argv[1].split(','): importlib.import_module(dep)
assert not any(m == 'mlsys' or m.startswith('mlsys.') for m in sys.modules), 'a dependency imported mlsys'
for name in sys.argv[2].split(','):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(f'mlsys.{name}')
            out = {'error': '', 'loaded': sorted(m[6:] for m in sys.modules if m.startswith('mlsys.'))}
        except BaseException: out = {'error': traceback.format_exc()[-2000:], 'loaded': []}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f: got = f.read()
    os.waitpid(pid, 0)
    print(json.dumps({name: json.loads(got) if got else {'error': 'the child died', 'loaded': []}}), flush=True)
"""

def _loaded_alone(names:list[str]) -> dict[str, tuple[str, list[str]]]:
    "Import each `mlsys.NAME` in a forked child of an interpreter that has loaded only `DEPS`: its error output (empty on success) and the `mlsys` modules it loaded."
    p = subprocess.run([sys.executable, '-c', _FORKS, ','.join(DEPS), ','.join(names)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = {k: (v['error'], v['loaded']) for line in p.stdout.splitlines() if line.startswith('{') for k, v in json.loads(line).items()}
    assert sorted(got) == sorted(names), p.stdout[-2000:]
    return got

def test_each_module_imports_alone():
    "With no `mlsys` module loaded before it, each module imports without error and loads no module above it."
    got = _loaded_alone(LAYERS)
    assert {n: err for n, (err, _) in got.items() if err} == {}
    above = {n: sorted(m for m in loaded if m in LAYERS and LAYERS.index(m) > LAYERS.index(n)) for n, (_, loaded) in got.items()}
    assert {n: v for n, v in above.items() if v} == {}
