import json, os, subprocess, sys
from pathlib import Path
import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
SMALL = ['-p', 'n_days', '10']  # a short world keeps the CLI tests fast; `make test` also runs the full small world
SMALL_TRAIN = ['-p', 'val_days', '2', '-p', 'test_days', '2', '-p', 'epochs', '2', '-p', 'baseline', 'false']  # windows that fit 10 days
SMALL_GATES = ['-p', 'max_slice_gap', '1.0', '-p', 'slice_min_pos', '1', '-p', 'slice_min_rows', '5']  # two test days hold too few frauds per slice


def mlsys(*args, env=None, cwd=None):
    "Run the installed `mlsys` command; returns the CompletedProcess."
    e = {**os.environ, 'MLSYS_PROGRESS': 'log', **(env or {})}
    return subprocess.run([str(BIN/'mlsys'), *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd, timeout=600)


def run_record(proc):
    "The run folder printed on the last line of `mlsys run`, and its run.json."
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    return run_dir, json.loads((run_dir/'run.json').read_text())


@pytest.fixture
def ws(tmp_path):
    return tmp_path/'workspace'


def shared_once(tmp_path_factory, name:str, build) -> Path:
    "A folder built once per test session, also under xdist: the first worker to ask runs `build(folder)`, under a file lock; the others wait and reuse it."
    from filelock import FileLock
    root = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'): root = root.parent   # the workers' base folders share this parent
    folder, done = root/name, root/f'{name}.done'
    with FileLock(str(root/f'{name}.lock')):
        if not done.exists():
            build(folder)
            done.touch()
    return folder


def _full_run(folder):
    p = mlsys('run', '--workspace', folder/'workspace', *SMALL, *SMALL_TRAIN, *SMALL_GATES)
    assert p.returncode == 0, p.stderr[-3000:]
    (folder/'proc.json').write_text(json.dumps({'args': p.args, 'returncode': p.returncode, 'stdout': p.stdout, 'stderr': p.stderr}))


@pytest.fixture(scope='session')
def production_ws(tmp_path_factory):
    "One full `mlsys run` on the small world, built once per session: call the fixture with a folder to get a private copy of the workspace."
    import shutil
    folder = shared_once(tmp_path_factory, 'production', _full_run)
    def copy(dst):
        shutil.copytree(folder/'workspace', dst, symlinks=True)
        return dst
    copy.original_proc = subprocess.CompletedProcess(**json.loads((folder/'proc.json').read_text()))
    return copy
