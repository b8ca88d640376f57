"Routing, guard and A/B statistics of `mlsys.deploy`, without a server: validation messages, sticky hashing, modes, atomic state, triggers, tests."
import json, math, os, subprocess, sys, threading
import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency
from mlsys.deploy import (MODES, DeployError, Guard, RouteConfig, Router, bucket, buckets, enforce, psi, replay, route_config,
                          sample_size, sequential_test, two_proportion_test)
from pydantic import ValidationError

USERS = [f'u{i:06d}' for i in range(20_000)]


@pytest.mark.parametrize('kw, message', [
    ({'mode': 'canary'}, "challenger=None: mode='canary' needs a challenger"),
    ({'mode': 'ab', 'challenger': '2', 'share': 1.5}, 'share=1.5: Input should be less than or equal to 1'),
    ({'mode': 'rainbow'}, "mode='rainbow': Input should be 'single'"),
    ({'champion': 'prod'}, "champion='prod': String should match pattern"),
    ({'mode': 'shadow', 'challenger': 'production'}, "challenger='production': must differ from champion='production'"),
    ({'min_requests': 500, 'window': 100}, 'window=100: must be at least min_requests=500'),
    ({'max_psi': 0}, 'max_psi=0: Input should be greater than 0'),
    ({'shares': 0.1}, 'shares=0.1: unknown key'),
])
def test_route_config_errors_name_field_value_and_rule(kw, message):
    with pytest.raises(DeployError, match='invalid route') as e: route_config(**kw)
    assert message in str(e.value)


def test_route_config_is_frozen_and_accepts_every_mode():
    for mode in MODES: assert route_config(mode=mode, challenger=None if mode == 'single' else '2').mode == mode
    assert route_config(mode='canary', challenger='latest', champion='3').challenger == 'latest'
    with pytest.raises(ValidationError): route_config().share = 0.5
    with pytest.raises(ValidationError): RouteConfig(mode='ab')   # the plain constructor raises pydantic's error


def test_bucket_is_sticky_uniform_and_salted():
    assert bucket('u1') == bucket('u1') == buckets(['u1'])[0] and bucket('u1') != bucket('u1', 'other')
    # the same value in a fresh interpreter with another hash seed: no dependence on Python's hash()
    code = "from mlsys.deploy import bucket; print(repr(bucket('u1')))"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**os.environ, 'PYTHONHASHSEED': '123'}, check=True).stdout
    assert float(out) == bucket('u1')
    b = buckets(USERS)
    assert 0 <= b.min() and b.max() < 1
    counts = np.bincount((b * 10).astype(int), minlength=10)
    assert chi2_contingency([counts, [len(b) / 10] * 10])[1] > 0.001
    assert abs((b < 0.05).mean() - 0.05) < 4 * math.sqrt(0.05 * 0.95 / len(b))


def test_router_modes():
    keys = USERS[:5000]
    single, shadow = Router(), Router(route_config(mode='shadow', challenger='2'))
    assert not single.serve_challenger(keys).any() and not single.needs_challenger() and not single.shadow
    assert not shadow.serve_challenger(keys).any() and shadow.shadow and shadow.needs_challenger()
    canary = Router(route_config(mode='canary', challenger='2', share=0.1))
    got = canary.serve_challenger(keys)
    assert (got == (buckets(keys) < 0.1)).all() and list(canary.arms(keys[:3])) == ['challenger' if g else 'champion' for g in got[:3]]
    ab = Router(route_config(mode='ab', challenger='2', share=0.5, salt='exp'))
    assert 0.47 < ab.serve_challenger(keys).mean() < 0.53 and (ab.serve_challenger(keys) == (buckets(keys, 'exp') < 0.5)).all()
    bg = Router(route_config(mode='blue_green', challenger='2'))
    assert not bg.serve_challenger(keys).any()
    bg.switch(); assert bg.serve_challenger(keys).all()
    bg.switch(); assert not bg.serve_challenger(keys).any()
    with pytest.raises(DeployError, match="switch needs mode='blue_green'; mode='canary'"): canary.switch()
    assert len(single.serve_challenger([])) == 0


def test_update_is_validated_atomic_and_logged():
    r = Router(route_config(mode='canary', challenger='2'))
    before = r.config
    with pytest.raises(DeployError, match='update refused: share=2.0'): r.update(share=2.0)
    with pytest.raises(DeployError, match="mode='canary' needs a challenger"): r.update(challenger=None)
    assert r.config is before and r.events == []
    new = r.update(share=0.2, reason='widen')
    assert r.config is new and new is not before and before.share == 0.05
    assert r.events[-1]['action'] == 'update' and r.events[-1]['changes'] == {'share': [0.05, 0.2]} and r.events[-1]['reason'] == 'widen'
    assert r.update(share=0.2) is new and len(r.events) == 1   # no change, no event


def test_concurrent_updates_never_mix_configs():
    r = Router(route_config(mode='canary', challenger='2', share=0.1))
    seen, stop = set(), threading.Event()
    def reader():
        while not stop.is_set():
            c = r.config; seen.add((c.share, c.salt))
    t = threading.Thread(target=reader); t.start()
    for i in range(300): r.update(share=0.1 if i % 2 else 0.3, salt='a' if i % 2 else 'b')
    stop.set(); t.join()
    assert seen <= {(0.1, 'mlsys'), (0.1, 'a'), (0.3, 'b')}


def test_rollback_records_reason_and_is_idempotent():
    r = Router(route_config(mode='blue_green', challenger='4', live='challenger'))
    cfg = r.rollback('p99 too high')
    assert (cfg.mode, cfg.challenger, cfg.live, cfg.champion) == ('single', None, 'champion', 'production')
    assert r.events[-1]['action'] == 'rollback' and r.events[-1]['reason'] == 'p99 too high' and 'time' in r.events[-1]
    assert r.rollback('again') is cfg and len(r.events) == 1


def test_save_load_roundtrip_autosave_and_errors(tmp_path):
    p = tmp_path/'routing.json'
    r = Router(route_config(mode='canary', challenger='2'), path=p)
    r.update(share=0.1); r.rollback('bad scores')
    again = Router.load(p)
    assert again.config == r.config and again.events == r.events and again.path == p
    assert [f.name for f in tmp_path.iterdir()] == ['routing.json']   # no temporary file left behind
    d = json.loads(p.read_text()); d['config']['share'] = 7
    (tmp_path/'bad.json').write_text(json.dumps(d))
    with pytest.raises(DeployError, match='share=7: Input should be less than or equal to 1'): Router.load(tmp_path/'bad.json')
    (tmp_path/'torn.json').write_text('{"config": {"mo')
    with pytest.raises(DeployError, match='cannot read routing state'): Router.load(tmp_path/'torn.json')


def test_save_failure_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path/'routing.json'; r = Router(route_config(mode='shadow', challenger='2')); r.save(p)
    old = p.read_text()
    import mlsys.config
    def boom(*a, **k): raise OSError('disk full')
    monkeypatch.setattr(mlsys.config.os, 'fsync', boom)
    with pytest.raises(OSError): r.save(p)
    assert p.read_text() == old and [f.name for f in tmp_path.iterdir()] == ['routing.json']


def _fill(g, n=400, errors=0.0, latency=20.0, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    g.record('champion', latency, False, rng.normal(size=n))
    g.record('challenger', np.full(n, latency), rng.random(n) < errors, rng.normal(shift, size=n))
    return g


def test_guard_triggers_and_healthy_stream():
    cfg = route_config(mode='canary', challenger='2')
    assert _fill(Guard(cfg)).check() == []
    (r,) = _fill(Guard(cfg), errors=0.1).check(); assert r.startswith('challenger error rate') and 'max_error_rate 2.00%' in r
    (r,) = _fill(Guard(cfg), latency=300).check(); assert 'p99 latency 300.0 ms > max_p99_ms 250 ms' in r
    (r,) = _fill(Guard(cfg), shift=1.0).check(); assert r.startswith('PSI of challenger scores vs the champion') and 'max_psi 0.25' in r
    assert len(_fill(Guard(cfg), errors=0.1, latency=300, shift=1.0).check()) == 3


def test_guard_waits_for_min_requests_and_slides():
    cfg = route_config(mode='canary', challenger='2', min_requests=100, window=200)
    g = Guard(cfg); g.record('challenger', 1.0, [True] * 99)
    assert g.check() == [] and g.stats()['challenger']['requests'] == 99
    g.record('challenger', 1.0, True); assert 'error rate 100.00%' in g.check()[0]
    g.record('challenger', 1.0, [False] * 200)                       # the failures slide out of the window
    s = g.stats()['challenger']; assert (s['requests'], s['total'], s['error_rate']) == (200, 300, 0.0) and g.check() == []
    g.record('challenger', [1.0] * 150 + [900.0] * 50, False)           # 25% slow requests: p99 trips
    assert 'p99 latency 900.0 ms' in g.check()[0]


def test_guard_inputs_and_reference():
    g = Guard(route_config(mode='blue_green', challenger='2', live='challenger'), reference=np.random.default_rng(0).normal(size=1000))
    with pytest.raises(DeployError, match="arm='blue'"): g.record('blue', 1.0)
    with pytest.raises(DeployError, match='latency_ms has 3 values, error 2'): g.record('champion', [1, 2, 3], [True, False])
    with pytest.raises(DeployError, match=r'latency_ms=\[-1.0\]'): g.record('champion', -1.0)
    g.record('challenger', 5.0, False, np.random.default_rng(1).normal(2, size=300))    # no champion traffic at all
    assert g.check()[0].startswith('PSI of challenger scores vs the reference')
    g.record('challenger', 5.0, False, [np.nan] * 10); assert g.stats()['challenger']['scores'] == 300   # NaN scores ignored


def test_enforce_rolls_back_once_and_resets():
    cfg = route_config(mode='canary', challenger='2'); r, g = Router(cfg), _fill(Guard(cfg), errors=0.5)
    reasons = enforce(r, g)
    assert len(reasons) == 1 and r.config.mode == 'single' and r.events[-1]['reason'] == reasons[0]
    assert g.stats()['challenger']['requests'] == 0 and enforce(r, _fill(Guard(cfg), errors=0.5)) == []   # single: nothing to roll back


def test_replay_shadow_and_fallback():
    rng = np.random.default_rng(0)
    req = pd.DataFrame({'user_id': [f'u{i}' for i in rng.integers(0, 300, 1000)], 'x': rng.random(1000)})
    cfg = route_config(mode='shadow', challenger='2')
    log = replay(Router(cfg), Guard(cfg), req, {'champion': lambda d: d.x.to_numpy(), 'challenger': lambda d: d.x.to_numpy()})
    assert (log.arm == 'champion').all() and log.challenger_score.notna().all() and not log.rollback.any()
    cfg = route_config(mode='ab', challenger='2', share=0.5)
    def broken(d): raise RuntimeError('boom')
    r = Router(cfg); log = replay(r, Guard(cfg), req, {'champion': lambda d: d.x.to_numpy(), 'challenger': broken}, batch_size=50)
    assert np.allclose(log.score, req.x) and (log.arm == 'champion').all() and r.config.mode == 'single'


def test_psi_values():
    rng = np.random.default_rng(0); a = rng.normal(size=5000)
    assert psi(a, a) == 0 and psi(a, rng.normal(size=5000)) < 0.02 and psi(a, rng.normal(1, size=5000)) > 0.6
    # hand-computed: two bins split at the median of `expected`, all of `actual` in the upper bin
    eps = 1e-4; pe, pa = np.array([0.5 + eps, 0.5 + eps]) / (1 + 2 * eps), np.array([eps, 1 + eps]) / (1 + 2 * eps)
    assert psi([0, 0, 1, 1], [5, 6], bins=2) == pytest.approx(float(np.sum((pa - pe) * np.log(pa / pe))))
    with pytest.raises(DeployError, match='bins=1'): psi(a, a, bins=1)
    with pytest.raises(DeployError, match='got 0 expected'): psi([], a)


def test_two_proportion_test_known_values():
    t = two_proportion_test(100, 1000, 130, 1000)
    chi2, p, *_ = chi2_contingency([[100, 900], [130, 870]], correction=False)
    assert t['p_value'] == pytest.approx(p, abs=1e-12) and t['z'] ** 2 == pytest.approx(chi2)
    assert t['z'] == pytest.approx(2.1027, abs=1e-4) and t['diff'] == pytest.approx(0.03) and t['significant']
    se = math.sqrt(0.1 * 0.9 / 1000 + 0.13 * 0.87 / 1000)
    assert t['ci95'] == pytest.approx((0.03 - 1.959964 * se, 0.03 + 1.959964 * se), abs=1e-6)
    v = two_proportion_test(np.array([100, 50]), 1000, np.array([130, 50]), 1000)
    assert v['p_value'][0] == pytest.approx(p) and v['p_value'][1] == 1.0 and list(v['significant']) == [True, False]
    with pytest.raises(DeployError, match='x_b=11.0 of n_b=10.0'): two_proportion_test(1, 10, 11, 10)


def test_sample_size_textbook():
    assert sample_size(0.10, 0.02) == 3841                 # 10% -> 12%, alpha 0.05 two-sided, power 0.8
    assert sample_size(0.12, -0.02) == 3841                # the same pair of rates, the other way round
    assert sample_size(0.5, 0.1, power=0.9) > sample_size(0.5, 0.1)
    with pytest.raises(DeployError, match='p_base=0.95, mde=0.1'): sample_size(0.95, 0.1)


def test_sequential_test_valid_under_peeking_and_finds_effects():
    rng = np.random.default_rng(0); n = 500 * np.arange(1, 41)
    stops = [sequential_test(rng.binomial(500, 0.05, 40).cumsum(), n, rng.binomial(500, 0.05, 40).cumsum(), n, tau=0.01)['look'] is not None for _ in range(300)]
    assert np.mean(stops) <= 0.05
    r = sequential_test(rng.binomial(500, 0.05, 40).cumsum(), n, rng.binomial(500, 0.08, 40).cumsum(), n, tau=0.01)
    assert r['decision'] == 'B higher' and r['look'] is not None and r['n_b'] == n[r['look']] and r['p_value'] <= 0.05
    assert sequential_test(0, 100, 0, 100)['decision'] == 'no decision'
    with pytest.raises(DeployError, match='never decreasing'): sequential_test([1, 2], [10, 5], [1, 2], [10, 20])
    with pytest.raises(DeployError, match='same length'): sequential_test([1, 2], [10, 20], [1], [10])
