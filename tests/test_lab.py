"""The five ipywidgets panels in a real JupyterLab front end, as a reader uses them. A notebook written here builds each
panel from small synthetic inputs through the library (the chapters build the same panels from their worlds; their
display cells are `eval: false`, so no test runs them); `jupyter lab` serves it, headless Chromium opens it, runs every
cell through JupyterLab's own command, then, for each panel, drags a slider's handle with the mouse and waits until the
panel's output (a figure, or capacity's table) is drawn again by the kernel. That is the whole round trip a reader
depends on: the widget manager renders the views, a drag reaches the kernel over the comm, the kernel recomputes and
the new output reaches the page. Marked `docs` (`make test-docs`, beside pytest in `.ci/run`)."""
import os, secrets, socket, subprocess, sys, time
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.docs
ROOT = Path(__file__).resolve().parents[1]

# (panel, the slider to drag, the cell that builds the panel from small inputs through the library)
PANELS = [
    ('threshold', 'block_t', """\
from mlsys.evaluate import threshold_panel
y = rng.random(4000) < 0.03
p = np.clip(0.7 * y * rng.random(4000) + rng.beta(1, 30, 4000), 0, 1)
threshold_panel(y, p, rng.lognormal(3.5, 1, 4000))"""),
    ('canary', 'min_requests', """\
from mlsys.deploy import canary_grid, canary_panel
users, champion = rng.integers(0, 3000, 20_000).astype(str), rng.beta(1, 30, 20_000)
canary_panel(canary_grid(users, champion, {'percent bug': champion * 100 % 1, 'retrain': champion * 1.02}))"""),
    ('ramp', 'psi_threshold', """\
from mlsys.monitor import DriftDetector, drift_ramp, ramp_panel
day = lambda n: pd.DataFrame({'amount': rng.lognormal(3.5, 1, n)})
ramp_panel(drift_ramp(DriftDetector(day(5000), ['amount']), [day(2000) for _ in range(10)]))"""),
    ('knobs', 'search_k', """\
from mlsys.retrieval import ItemIndex, exact_search, knob_panel, sweep
items, queries = rng.normal(size=(3000, 16)).astype('float32'), rng.normal(size=(50, 16)).astype('float32')
truth = exact_search(items, queries)
forests = {t: ItemIndex.build(np.arange(3000), items, n_trees=t) for t in (10, 50)}
knob_panel(sweep([('annoy', {'n_trees': t, 'search_k': k}, lambda q, ix=ix, k=k: ix.positions(q, 10, k))
                  for t, ix in forests.items() for k in (100, 500, 2000)], queries, truth))"""),
    ('capacity', 'n_layers', """\
from mlsys.capacity import capacity_panel, load_capacity
capacity_panel(load_capacity(Path(EXAMPLE)))"""),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "`jupyter lab` serving a notebook of the five panels: yields the notebook's address."
    root = tmp_path_factory.mktemp('lab')
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        'from pathlib import Path\nimport numpy as np, pandas as pd\nrng = np.random.default_rng(0)\n'
        f'EXAMPLE = {str(ROOT/"nbs/capacity.example.yaml")!r}   # the capacity chapter\'s example inputs')] +
        [nbformat.v4.new_code_cell(src) for _, _, src in PANELS])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, root/'panels.ipynb')
    port, token = free_port(), secrets.token_hex(16)
    # a private configuration, runtime and workspace folder: the user's settings cannot change what the test sees
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(root/'.config'), 'JUPYTER_RUNTIME_DIR': str(root/'.runtime'),
           'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    server = subprocess.Popen(
        [sys.executable, '-m', 'jupyterlab', '--no-browser', f'--port={port}', '--ip=127.0.0.1',
         f'--IdentityProvider.token={token}', '--allow-root', f'--ServerApp.root_dir={root}', '--LabApp.expose_app_in_browser=True',
         f'--LabApp.workspaces_dir={root/".workspaces"}', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            try:
                socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None, f'jupyter lab exited:\n{server.stdout.read()[-3000:]}'
                time.sleep(0.1)
        yield f'http://127.0.0.1:{port}/lab/tree/panels.ipynb?token={token}'
    finally:
        server.terminate()
        try: server.wait(timeout=20)
        except subprocess.TimeoutExpired: server.kill()


def wait_for(browser, script:str, timeout:float, what:str):
    "Poll `script` in the page until it returns something truthy; fail naming `what` after `timeout` seconds."
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = browser.execute_script(script)
        if got: return got
        time.sleep(0.25)
    page = browser.execute_script("const n = document.querySelector('.jp-Notebook'); "
                                  "return n ? n.innerText : document.body.innerText;")
    raise AssertionError(f'{what}: not seen within {timeout:.0f} s; the page ends with:\n{page[-3000:]}')


# Each panel's output as the reader sees it (a JavaScript expression): the figure's PNG (its data URL) or, for capacity,
# the table's text.
OUTPUTS = """[...document.querySelectorAll('.widget-interact')].map(p => {
    const out = p.querySelector('.widget-output'), img = out && out.querySelector('img');
    return img ? img.src : (out ? out.innerText : ''); })"""


@pytest.fixture(scope='module')
def panels(browser, lab):
    "The notebook opened in JupyterLab and run through JupyterLab's command: every panel's first view drawn."
    browser.get(lab)
    wait_for(browser, """const app = window.jupyterapp, w = app && app.shell.currentWidget;
        const kernel = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
        return kernel && kernel.status === 'idle';""", 120, 'the notebook open with an idle kernel')
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    got = wait_for(browser, f"const o = {OUTPUTS}; return o.length === {len(PANELS)} && o.every(x => x) ? o : "
                   f"(document.querySelector('.jp-Notebook').innerText.includes('Traceback') ? 'error' : null);",
                   240, f'{len(PANELS)} panels, each with its output')
    assert got != 'error', browser.execute_script("return document.querySelector('.jp-Notebook').innerText;")[-3000:]
    return got


def test_panels_render_with_their_first_view(browser, panels):
    for (name, *_), out in zip(PANELS, panels):
        if name == 'capacity': assert 'sequences' in out, out[:300]           # the report's rows
        else: assert out.startswith('data:image/png'), f'{name}: no figure ({out[:80]})'
    errors = browser.execute_script("return [...document.querySelectorAll('.jp-OutputArea-output')]"
                                    ".map(o => o.innerText).filter(t => t.includes('Traceback') || t.includes('Error'));")
    assert errors == [], errors[0][-3000:]


@pytest.mark.parametrize('i', range(len(PANELS)), ids=[p[0] for p in PANELS])
def test_dragging_a_slider_redraws_the_panel(browser, panels, i):
    from selenium.webdriver import ActionChains
    name, knob, _ = PANELS[i]
    browser.execute_script(f"window.before = {OUTPUTS}[{i}];")
    panel = browser.find_elements('css selector', '.widget-interact')[i]
    slider = next(s for s in panel.find_elements('css selector', '.widget-slider')
                  if s.find_element('css selector', '.widget-label').get_attribute('textContent').strip() == knob)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", slider)
    ActionChains(browser).drag_and_drop_by_offset(slider.find_element('css selector', '.noUi-handle'), -60, 0).perform()
    wait_for(browser, f"const o = {OUTPUTS}[{i}]; return o && o !== window.before;", 60,
             f'{name}: the output drawn again after dragging {knob}')
