"""The chapters' ipywidgets panels without a browser: each is built, a slider is moved in code, and the table it shows must
change as the pure function under it says. Also: importing the chapters' modules does not import ipywidgets (it is slow)."""
import subprocess, sys
import numpy as np, pandas as pd
import pytest


def knobs(panel) -> dict:
    "The panel's sliders by name (the last child of an `interactive` is its output)."
    return {w.description: w for w in panel.children[:-1]}


def test_importing_the_chapters_does_not_import_ipywidgets():
    code = 'import sys, mlsys.evaluate, mlsys.deploy, mlsys.monitor, mlsys.retrieval; print("ipywidgets" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == 'False'


def test_threshold_panel_follows_the_cost_functions():
    from mlsys.evaluate import Costs, expected_cost, threshold_panel, threshold_table
    rng = np.random.default_rng(0)
    y = rng.random(3000) < 0.05
    p, a = np.clip(rng.normal(0.3 + 0.4 * y, 0.15), 0, 1), rng.lognormal(4, 1, 3000)
    panel = threshold_panel(y, p, a, 0.5, 0.9, draw=True)   # the figure too, as in a kernel
    assert panel.result.per_1000.tolist() == threshold_table(y, p, a, 0.5, 0.9).per_1000.tolist()
    knobs(panel)['false_block'].value = 100.0
    got = panel.result.loc['these thresholds', 'per_1000']
    assert got == pytest.approx(expected_cost(y, p, a, 0.5, 0.9, Costs(false_block=100.0))['per_1000'])
    knobs(panel)['block_t'].value = 0.2          # below the review threshold: blocks at the review threshold
    assert panel.result.loc['these thresholds', 'block_t'] == 0.5


def test_canary_panel_reads_the_grid_as_the_replay_would():
    from mlsys.deploy import Guard, Router, canary_grid, canary_panel, canary_table, replay, route_config
    rng = np.random.default_rng(0)
    keys = [f'u{i}' for i in rng.integers(0, 600, 6000)]
    champion = rng.normal(size=6000)
    bad, good = champion + 2, champion + rng.normal(0, 0.2, 6000)
    cfg = route_config(mode='canary', challenger='2', share=0.2)
    log = replay(Router(cfg), Guard(cfg), pd.DataFrame({'user_id': keys}),
                 {'champion': lambda d: champion[d.index], 'challenger': lambda d: bad[d.index]})
    grid = canary_grid(keys, champion, {'percent bug': bad, 'retrain': good}, shares=(0.05, 0.2))
    row = canary_table(grid, 0.2).loc['percent bug']
    exposed = log.arm == 'challenger'
    assert (row['after requests'], row['challenger requests'], row['users exposed']) == (
        log.request[log.rollback].max() + 1, exposed.sum(), log.user_id[exposed].nunique())
    panel = canary_panel(grid, share=0.2, draw=True)
    assert panel.result.to_dict() == canary_table(grid, 0.2).to_dict()
    knobs(panel)['min_requests'].value = 50
    assert panel.result.to_dict() == canary_table(grid, 0.2, 50).to_dict()
    assert panel.result.loc['percent bug', 'users exposed'] < row['users exposed']


def test_ramp_panel_follows_detection_delay():
    from mlsys.monitor import DriftDetector, detection_delay, drift_ramp, ramp_panel
    def day(n, seed):
        r = np.random.default_rng(seed)
        return pd.DataFrame({'amount': r.lognormal(3.5, 0.8, n), 'country': r.choice(['US', 'GB'], n)})
    det = DriftDetector(day(20_000, 0), ['amount'], ['country'])
    ramp = drift_ramp(det, [day(3000, s) for s in range(1, 5)], rates=(0, 0.1, 0.3))
    panel = ramp_panel(ramp, rate=0.1)
    assert panel.result.equals(detection_delay(ramp, 0.1))   # NaN where a ramp is not caught, in both
    knobs(panel)['psi_threshold'].value = 0.5
    assert panel.result.equals(detection_delay(ramp, 0.5))
    assert (panel.result['first alarm (days after onset)'].fillna(99) >= detection_delay(ramp, 0.1)[
        'first alarm (days after onset)'].fillna(99)).all()   # a higher floor never alarms sooner


def test_knob_panel_picks_from_the_measured_grid():
    from mlsys.retrieval import knob_panel, knob_view
    rows = pd.DataFrame([{'method': 'annoy', 'n_trees': t, 'search_k': s, 'recall_at_10': min(1.0, 0.6 + t / 200 + s / 10_000),
                          'ms_per_query': 0.05 + s / 20_000} for t in (10, 50) for s in (500, 2000)])
    panel = knob_panel(rows, 50, 2000, exact_ms=1.0)
    assert panel.result.to_dict() == knob_view(rows, 50, 2000, 1.0).to_dict()
    knobs(panel)['n_trees'].value = 10
    assert panel.result.loc['this setting', 'recall_at_10'] == pytest.approx(0.6 + 10 / 200 + 0.2)
    assert not panel.result.loc['this setting', 'meets_target']
