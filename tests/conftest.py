import json, os, shutil, subprocess, sys, threading
from pathlib import Path
import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
SMALL = ['-p', 'n_days', '10']  # a short world keeps the CLI tests fast; `make test` also runs the full small world
SMALL_TRAIN = ['-p', 'val_days', '2', '-p', 'test_days', '2', '-p', 'epochs', '2', '-p', 'baseline', 'false']  # windows that fit 10 days
# The evaluate job's gates at their defaults, on a world whose labels arrive within about two days (median) instead of ten: its
# two-day test window then holds ~50 labelled frauds (with ten, one among 55 rows), above the 30 a gate needs to judge (06_evaluate).
FAST_LABELS = ['-p', 'label_delay_days', '2']


def mlsys(*args, env=None, cwd=None):
    "Run the installed `mlsys` command; returns the CompletedProcess."
    e = {**os.environ, 'MLSYS_PROGRESS': 'log', **(env or {})}
    return subprocess.run([str(BIN/'mlsys'), *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd, timeout=600)


def mlsys_main(*args):
    """Run `mlsys.cli.main` in this process (what the `mlsys` command calls), for commands that start no pipeline: the
    same code and exit codes as `mlsys(...)` without starting an interpreter (~0.7 s each). Returns a CompletedProcess."""
    import contextlib, io
    from mlsys.cli import main
    argv, out, err = list(map(str, args)), io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main(argv)
        except SystemExit as e: code = e.code if isinstance(e.code, int) else 1   # argparse's usage errors
    return subprocess.CompletedProcess(['mlsys', *argv], code, out.getvalue(), err.getvalue())


def http_post(url, body, headers=None, timeout=30):
    "POST `body` (bytes as they are, else JSON) to `url`: the status, the JSON reply and the response headers, also for a 4xx or 5xx."
    import urllib.error, urllib.request
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {'Content-Type': 'application/json', **(headers or {})}, method='POST')
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read() or b'null'), dict(e.headers)


def post(url, body, timeout=30):
    "`http_post` without the headers: (status, the JSON reply)."
    return http_post(url, body, timeout=timeout)[:2]


def assert_refusals(server, endpoint:str, cases:dict) -> str:
    """Each body of `cases` (bytes or JSON) answered with its (status, field, rule) at `/endpoint`, and the 422s counted
    under `endpoint` in `/metrics`; returns the metrics text."""
    import urllib.request
    for body, (code, field, rule) in cases.items():
        got, out = post(server.url(f'/{endpoint}'), body)
        assert got == code and out['detail'][0]['field'] == field and rule in out['detail'][0]['rule'], (body[:60], got, out)
    with urllib.request.urlopen(server.url('/metrics'), timeout=30) as r: metrics = r.read().decode()
    assert f'mlsys_requests_total{{code="422",endpoint="{endpoint}"}}' in metrics
    return metrics


def fuzz_routes(server, paths=None, examples:int=25):
    """Valid and invalid requests generated from `server`'s own OpenAPI document (schemathesis), `examples` of each kind for
    every operation (or those on `paths`): the status codes seen, and the (method, path, status, text) of each 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode
    ops = [r.ok() for r in schemathesis.openapi.from_url(server.url('/openapi.json')).get_all_operations()]
    calls, failures = [], []
    for op in [o for o in ops if paths is None or o.path in paths]:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=op.as_strategy(mode))
            def fuzz(case):
                r = case.call(base_url=server.url())
                calls.append(r.status_code)
                if r.status_code >= 500: failures.append((case.method, case.path, r.status_code, r.text[:200]))
            try: fuzz()
            except Unsatisfiable: pass   # e.g. no invalid request exists for a GET without parameters
    return calls, failures


def run_record(proc):
    "The run folder printed on the last line of `mlsys run`, and its run.json."
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    return run_dir, json.loads((run_dir/'run.json').read_text())


@pytest.fixture
def ws(tmp_path):
    return tmp_path/'workspace'


_building: dict[str, tuple[threading.Thread, list]] = {}   # shared folders this process is building in the background, and their errors


def shared_once(tmp_path_factory, name:str, build) -> Path:
    "A folder built once per test session, also under xdist: the first worker to ask runs `build(folder)`, under a file lock; the others wait and reuse it."
    from filelock import FileLock
    if name in _building and _building[name][0] is not threading.current_thread():
        thread, errors = _building[name]; thread.join()
        if errors: raise errors[0]
    root = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'): root = root.parent   # the workers' base folders share this parent
    folder, done = root/name, root/f'{name}.done'
    with FileLock(str(root/f'{name}.lock')):
        if not done.exists():
            build(folder)
            done.touch()
    return folder


# The shared run also simulates eight days beyond the ten it lands, holds them back and replays them in the loop stage under
# two policies (tests/test_loop.py); the loop works on copies, so the workspace is the ten-day pipeline's.
LOOP = ['-p', 'simulate_days', '8', '-p', 'policies', 'none,hybrid']
# what it runs: every fraud stage but the optional tune
SHARED_RUN_STAGES = ['ingest', 'validate', 'features', 'train', 'evaluate', 'register', 'fraud_layers', 'batch_predict', 'loop']


def _full_run(folder):
    p = mlsys('run', '--workspace', folder/'workspace', *SMALL, *SMALL_TRAIN, *FAST_LABELS, *LOOP)
    assert p.returncode == 0, p.stderr[-3000:]
    (folder/'proc.json').write_text(json.dumps({'args': p.args, 'returncode': p.returncode, 'stdout': p.stdout, 'stderr': p.stderr}))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Start the shared full run as soon as the selected tests are known, so this worker runs other tests while it builds; and
    order the tests that need it last (stable sort: the same order in every xdist worker), so that neither worker waits for it
    while other tests are left (under `-n 2` both workers used to block in its set-up for over a minute)."""
    uses = lambda item: 'production_ws' in getattr(item, 'fixturenames', ())
    items[:] = sorted(items, key=uses)
    if config.option.collectonly or 'production' in _building or not any(map(uses, items)): return
    errors = []
    def build():
        try: shared_once(config._tmp_path_factory, 'production', _full_run)
        except BaseException as e: errors.append(e)
    _building['production'] = (threading.Thread(target=build, daemon=True), errors)
    _building['production'][0].start()


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


def chromium() -> str|None:
    return shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')


@pytest.fixture(scope='session')
def browser():
    "Headless Chromium driven by Selenium (the docs tests: the site's pages, the widgets in JupyterLab)."
    if not chromium() or not shutil.which('chromedriver'):
        pytest.skip('needs Chromium and its driver: apt-get install chromium chromium-driver (.ci/run installs them)')
    webdriver = pytest.importorskip('selenium.webdriver', reason='needs selenium (a dev dependency)')
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium()
    for a in ['--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--window-size=1280,1000']:
        opts.add_argument(a)
    # Debian's chromedriver, named: Selenium would otherwise try to download one
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=shutil.which('chromedriver')))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
