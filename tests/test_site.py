"""The teaching site as a reader gets it. `python -m mlsys.site docs` builds `_docs/` from the executed chapters (after
`make test-notebooks` nothing is stale, so this only renders), then headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by Selenium) opens the index and a sample of chapters: each page loads, its sidebar links
resolve, its figures are images that decoded (naturalWidth > 0), and no cell shows an error or a traceback.
Marked `docs`: `make test-docs` runs it after test-notebooks; `make test-pytest` leaves it out. No screenshots are kept."""
import os, subprocess, sys, time
from pathlib import Path
from urllib.parse import urlparse, unquote

import pytest

pytestmark = pytest.mark.docs
ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT/'_docs'
# The chapters with an ipywidgets panel (each shows its default view as a figure) and the tour; the jobs page is stored
# unexecuted and must load all the same.
SAMPLE = ['index.html', 'evaluate.html', 'deploy.html', 'monitor.html', 'retrieval.html', 'capacity.html', 'world.html',
          'jobs/train.html']
WITH_FIGURES = ['evaluate.html', 'deploy.html', 'monitor.html', 'retrieval.html', 'capacity.html']
# an error output as nbconvert and Quarto mark it, and a traceback printed by any cell (warnings on stderr are allowed)
ERROR_MARKS = ['Traceback (most recent call last)', 'output_error', 'cell-output-error']


@pytest.fixture(scope='module')
def site() -> Path:
    "`_docs/`, built by `python -m mlsys.site docs` (stale chapters executed first; after test-notebooks, none are)."
    t0 = time.time()
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-m', 'mlsys.site', 'docs'], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=3600)
    assert r.returncode == 0, f'the site did not build:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}'
    print(f'site built in {time.time() - t0:.0f} s:', r.stdout.strip().splitlines()[-1])
    return SITE


def test_every_sidebar_entry_has_a_page(site):
    from mlsys.site import nav_sections, page_name
    listed = [n for _, nbs in nav_sections(ROOT/'nbs/sidebar.yml') for n in nbs]
    assert len(listed) > 40
    missing = [n for n in listed if not (site/page_name(n)).exists()]
    assert missing == [], f'sidebar entries without a page: {missing}'


def open_page(browser, site:Path, page:str) -> dict:
    "Load `page` and read back what a reader would see of it."
    browser.get((site/page).as_uri())
    return browser.execute_script("""
        const imgs = [...document.images].filter(i => i.src.startsWith('data:') || !i.closest('nav'));
        return {ready: document.readyState, title: document.title, text: document.body.innerText,
                html: document.body.innerHTML,
                links: [...document.querySelectorAll('nav a')].map(a => a.href),
                images: imgs.map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))};""")


@pytest.mark.parametrize('page', SAMPLE)
def test_page_loads_with_its_figures_and_no_error(browser, site, page):
    got = open_page(browser, site, page)
    assert got['ready'] == 'complete' and got['title'], page
    assert len(got['text']) > 500, f'{page} is (nearly) empty'
    for mark in ERROR_MARKS:
        assert mark not in got['html'], f'{page} shows an error output ({mark!r})'
    broken = [l for l in got['links'] if l.startswith('file:') and not Path(unquote(urlparse(l).path)).exists()]
    assert broken == [], f'{page}: sidebar links to missing pages {broken[:5]}'
    bad = [i for i in got['images'] if not i['complete'] or i['width'] == 0]
    assert bad == [], f'{page}: {len(bad)} of {len(got["images"])} images did not decode'
    if page in WITH_FIGURES: assert got['images'], f'{page} shows no figure'
