"The layered fraud defence in production (14b_defence): registry round trip and refusals, /predict's layered answer, its degraded paths and the gates."
import json
import numpy as np
import pandas as pd
import pytest

from mlsys.config import Workspace
from mlsys.defence import (LAYERS_NAME, Defence, LayersError, defence_predictors, gate_layered_cost, layers_stage,
                           load_defence, register_layers, row_costs)
from mlsys.fraud import decision_cost
from mlsys.registry import Registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def layered(production_ws, tmp_path_factory):
    "A copy of the production workspace with the layered system fitted by the job's function and put in production."
    ws = Workspace(production_ws(tmp_path_factory.mktemp('defence')/'workspace'))
    done = layers_stage(ws, ws.root/'fraud_layers', promote=False)
    reg = Registry(ws.models)
    reg.promote(LAYERS_NAME, done['version'], 'production', reason='tests: serve the layered system', force=True)
    return ws, done


@pytest.fixture(scope='module')
def client(layered):
    from fastapi.testclient import TestClient
    from mlsys.serve import ServeConfig
    from mlsys.server import create_app
    ws, _ = layered
    cfg = ServeConfig(log_predictions=False)
    with TestClient(create_app(ws, cfg, predictors=defence_predictors(ws))) as c: yield c


def _bodies(ws, n=20, **extra):
    from mlsys.world import read_table
    tx = read_table(ws.lake, 'transactions').tail(n)
    return {'instances': [{'user_id': str(t.user_id), 'merchant_id': int(t.merchant_id), 'device_id': str(t.device_id),
                           'amount': float(t.amount), 'ip': t.ip, 'account_age_days': 400.0,
                           'request_ts': int(t.ts.timestamp()), **extra} for t in tx.itertuples()]}

NEW_ACCOUNT = {'user_id': 'u-new', 'merchant_id': 1, 'device_id': 'd-new', 'amount': 900.0, 'ip': '10.1.2.3',
               'account_age_days': 1.0}


def test_stage_weighs_each_layer_and_registers_with_lineage(layered):
    ws, done = layered
    assert list(done['table'].index) == ['approve all', 'model alone', 'rules only', '+ model', '+ graph', '+ anomaly']
    assert done['table'].loc['+ graph', 'recall'] >= done['table'].loc['+ model', 'recall']
    assert done['metrics']['graph_checks'] == len(done['defence'].checks)
    assert done['table'].loc['approve all', 'recall'] == 0 and done['table'].loc['+ model', 'recall'] >= done['table'].loc['model alone', 'recall']
    assert [g.name for g in done['gates']] == ['layered no worse than model', 'fairness_fpr_ratio']
    reg = Registry(ws.models)
    lin = reg.lineage(LAYERS_NAME, done['version'])
    model = f"fraud:{reg.get('fraud', 'production')['version']}"
    assert lin['model'] == model and lin['derived_from'] == model
    assert json.loads((done['path']/'gates.json').read_text())[0]['name'] == 'layered no worse than model'


def test_registry_round_trip_and_refusals(layered):
    ws, done = layered
    reg = Registry(ws.models)
    d = load_defence(reg, done['version'])
    assert d.cfg == done['defence'].cfg and d.label == f"{LAYERS_NAME}:{done['version']}"
    x = np.random.default_rng(0).normal(size=(50, len(d.cfg.anomaly_features)))
    np.testing.assert_allclose(d.forest.score_samples(x), done['defence'].forest.score_samples(x))
    wrong = d.cfg.model_copy(update={'model_inputs': {'numeric': ['amount'], 'categorical': []}})
    v = register_layers(reg, Defence(wrong, d.forest))
    with pytest.raises(LayersError, match=r"expects fraud:\d+ inputs .*'amount'.*the registry has"): load_defence(reg, v)
    old = d.cfg.model_copy(update={'schema_version': 99})
    v = register_layers(reg, Defence(old, d.forest))
    with pytest.raises(LayersError, match='format 99; this mlsys reads formats 1, 2'): load_defence(reg, v)
    with pytest.raises(LayersError, match=rf'fitted for fraud:{d.cfg.model_version}, but fraud:77 serves'):
        load_defence(reg, done['version'], serving=77)


def test_served_answer_has_decision_layer_reasons_and_the_old_fields(client, layered):
    ws, done = layered
    assert client.get('/models').json()['layers'] == f"{LAYERS_NAME}:{done['version']}"
    r = client.post('/predict', json=_bodies(ws))
    assert r.status_code == 200, r.text
    for p in r.json()['predictions']:
        assert {'score', 'decision', 'model_version', 'degraded', 'degraded_reasons', 'request_id', 'layer', 'reasons',
                'reasons_available', 'layers_version'} <= set(p)
        assert p['decision'] in ('approve', 'review', 'block') and p['layer'] in ('none', 'rules', 'model', 'graph', 'anomaly')
        assert not p['degraded'] and p['reasons_available'] and (p['decision'] == 'approve') == (p['reasons'] == [])
    p = client.post('/predict', json={'instances': [NEW_ACCOUNT]}).json()['predictions'][0]
    assert p['decision'] == 'review' and p['layer'] == 'rules'
    assert 'new_account_high_amount: account 1.0 days old spending 900' in p['reasons']


def test_missing_rule_fields_get_422_naming_them(client):
    body = {'instances': [{k: v for k, v in NEW_ACCOUNT.items() if k not in ('ip', 'account_age_days')}]}
    r = client.post('/predict', json=body)
    assert r.status_code == 422
    detail = {d['field']: d['rule'] for d in r.json()['detail']}
    assert 'impossible_travel' in detail['instances.0.ip'] and 'blocklisted_ip' in detail['instances.0.ip']
    assert 'new_account_high_amount' in detail['instances.0.account_age_days']
    bad_ip = client.post('/predict', json={'instances': [{**NEW_ACCOUNT, 'ip': '999.1.1.1'}]})
    assert bad_ip.status_code == 422 and bad_ip.json()['detail'][0]['field'] == 'instances.0.ip'


def test_explanation_failure_never_fails_the_decision(client):
    p = client.app.state.predictors['/predict']
    class Broken:
        def contributions(self, ctx): raise RuntimeError('attribution broke')
    keep, p.explainer = p.explainer, Broken()
    try: a = client.post('/predict', json={'instances': [NEW_ACCOUNT]}).json()['predictions'][0]
    finally: p.explainer = keep
    assert a['decision'] == 'review' and a['reasons'] == [] and a['reasons_available'] is False
    assert 'mlsys_errors_total{kind="explanation"}' in client.get('/metrics').text


def test_rules_alone_answer_when_the_model_or_the_store_is_down(client, layered):
    ws, _ = layered
    p = client.app.state.predictors['/predict']
    def broken(rows): raise RuntimeError('model down')
    keep, p.chain.first.scores = p.chain.first.scores, broken
    try: down = client.post('/predict', json={'instances': [NEW_ACCOUNT]}).json()['predictions'][0]
    finally: p.chain.first.scores = keep
    assert down['degraded'] and {'model_error', 'rules_only'} <= set(down['degraded_reasons'])
    assert (down['decision'], down['layer']) == ('review', 'rules') and not any('model score' in r for r in down['reasons'])
    store, p.features.store = p.features.store, None
    try: nostore = client.post('/predict', json=_bodies(ws, 5)).json()['predictions']
    finally: p.features.store = store
    assert all({'feature_store_error', 'rules_only'} <= set(a['degraded_reasons']) for a in nostore)
    assert all(a['layer'] in ('rules', 'none') for a in nostore)


def test_without_a_matching_layered_system_predict_stays_as_it_was(production_ws, tmp_path, layered):
    import asyncio
    from mlsys.defence import LayeredPredictor
    from mlsys.serve import EntityInstance, ServeConfig
    ws = Workspace(production_ws(tmp_path/'workspace'))
    assert defence_predictors(ws) == {}   # none in production: `mlsys serve` keeps `FraudPredictor`
    reg, d = Registry(ws.models), layered[1]['defence']
    reg.promote(LAYERS_NAME, register_layers(reg, d), 'production', reason='tests', force=True)
    v = reg.derive('fraud', d.cfg.model_version, 'fraud', {'note': 'a retrained model'})
    reg.promote('fraud', v, 'production', reason='tests', force=True)   # the layers were fitted for the old one
    p = LayeredPredictor(ws, ServeConfig(log_predictions=False), reg=reg)
    assert p.defence is None and f'fraud:{d.cfg.model_version}' in p.layers_error and f'fraud:{v} serves' in p.layers_error
    async def one():
        p.start()
        try: return await p.predict([EntityInstance(user_id='u1', merchant_id=1, device_id='d1', amount=5.0)])
        finally: await p.stop()
    a = asyncio.run(one())[0]
    assert 'layer' not in a and a['model_version'] == f'fraud:{v}'


def test_cost_gate_and_row_costs():
    rng = np.random.default_rng(0)
    y, amount = rng.random(5000) < 0.02, rng.exponential(80, 5000)
    d = np.where(y & (rng.random(5000) < 0.8), 'review', 'approve')
    assert np.isclose(row_costs(d, y, amount).sum(), decision_cost(d, y, amount)['total_usd'])
    model = row_costs(d, y, amount)
    assert gate_layered_cost(model, model, positives=100).passed   # the same decisions: a difference of zero
    better = row_costs(np.where(y, 'block', d), y, amount)
    assert gate_layered_cost(better, model, positives=100).passed
    worse = row_costs(np.where(y, 'approve', d), y, amount)
    g = gate_layered_cost(worse, model, positives=100)
    assert not g.passed and g.detail.startswith('worse')
    thin = gate_layered_cost(model, model, positives=5)
    assert not thin.passed and thin.detail.startswith('insufficient evidence')


def test_format_1_versions_load_without_a_graph_layer(layered, tmp_path):
    from mlsys.defence import _files
    ws, done = layered
    reg, d = Registry(ws.models), done['defence']
    old = _files(tmp_path/'old', d, {})
    first = json.loads(d.cfg.model_dump_json(exclude={'graph', 'overflow'}))
    (old/'layers.json').write_text(json.dumps({**first, 'schema_version': 1}))
    back = load_defence(reg, reg.register(LAYERS_NAME, old, {}, [], {'run_id': 'tests'}))
    assert back.checks == [] and back.cfg.overflow == 'approve' and back.layers.queue == 'arrival'


def test_fit_graph_keeps_the_checks_that_pay():
    from mlsys.defence import GRAPH_SIGNALS, GraphCheck, fit_graph, graph_verdict
    rows = pd.DataFrame({f: 0.0 for f in GRAPH_SIGNALS}, index=range(100)).assign(amount=50.0)
    fraud = np.zeros(100, bool)
    rows.loc[:4, 'device_fraud_nbrs'], fraud[:5] = 3, True          # five frauds on a ring's device: block
    rows.loc[10:29, 'user_fraud_2hop'], fraud[10:13] = 1, True      # 3 of 20 near fraud: review pays ($100 < $150)
    checks = fit_graph(rows, fraud, np.ones(100, bool))
    assert [(c.feature, c.action) for c in checks] == [('device_fraud_nbrs', 'block'), ('user_fraud_2hop', 'review')]
    assert graph_verdict(checks, rows)[[0, 10, 50]].tolist() == [2, 1, 0]
    assert graph_verdict(checks, rows.drop(columns='user_fraud_2hop')) is None      # features missing: no verdict
    assert fit_graph(rows, fraud, np.zeros(100, bool)) == []                         # nothing left open: no check
    with pytest.raises(ValueError, match='names'):
        GraphCheck(feature='user_fraud_2hop', threshold=1, action='review', reason='{amount} near fraud')


def _graphed(d):
    from mlsys.defence import GRAPH_SIGNALS, GraphCheck
    check = GraphCheck(feature='device_fraud_nbrs', threshold=1, action='review',
                       reason=GRAPH_SIGNALS['device_fraud_nbrs'])
    return Defence(d.cfg.model_copy(update={'graph': [check.model_dump()]}), d.forest)


def test_graph_layer_reads_the_online_store_and_is_skipped_when_it_cannot(layered):
    import asyncio
    from mlsys.defence import LayeredPredictor
    from mlsys.features import open_store
    from mlsys.graph import GRAPH_REFS
    from mlsys.serve import ServeConfig
    from mlsys.world import read_table
    ws, done = layered
    graphed = _graphed(done['defence'])
    store = open_store(ws.features/'current')
    p = LayeredPredictor(ws, ServeConfig(log_predictions=False), store=store, defence=graphed)
    assert p.graph_refs == GRAPH_REFS and p.info()['graph_features']
    tx = read_table(ws.lake, 'transactions')
    near = tx[tx.device_id.astype(str).isin(graphed.cfg.blocklists['device_id'])].tail(30)
    body = {'instances': [{'user_id': str(t.user_id), 'merchant_id': int(t.merchant_id), 'amount': float(t.amount),
                           'device_id': str(t.device_id), 'ip': t.ip, 'account_age_days': 400.0}
                          for t in near.itertuples()]}
    items = p.Request.model_validate(body).instances
    seen = asyncio.run(p.predict(items))
    assert any(r.startswith('graph: shares a device with') for a in seen for r in a['reasons'])
    assert not any('graph_unavailable' in a['degraded_reasons'] for a in seen)
    p.graph_refs = None   # a store without the graph views: the other layers decide, the answer says so
    blind = asyncio.run(p.predict(items))
    assert all(a['degraded_reasons'] == ['graph_unavailable'] for a in blind)
    assert all(a['layer'] != 'graph' for a in blind)
    assert f'mlsys_degraded_total{{reason="graph_unavailable"}} {len(items)}.0' in p.metrics.exposition().decode()


def test_review_queue_online_agrees_with_offline_and_survives_a_restart(layered, tmp_path):
    import asyncio
    from mlsys.defence import LayeredPredictor, ReviewQueue
    from mlsys.fraud import decide, rule_hits
    from mlsys.serve import ServeConfig
    ws, done = layered
    d = done['defence']
    tight = Defence(d.cfg.model_copy(update={'reviews_per_day': 2, 'overflow': 'block'}), d.forest)
    p = LayeredPredictor(ws, ServeConfig(log_predictions=False), store=None, defence=tight)
    p.queue = ReviewQueue(tmp_path/'queue.sqlite', 2, 'block')
    day = int(pd.Timestamp('2026-03-02', tz='UTC').timestamp())
    times = [day + 60 * i for i in range(5)] + [day + 86_400 + 60 * i for i in range(3)]   # in order of time
    body = {'instances': [{**NEW_ACCOUNT, 'user_id': f'u{i}', 'request_ts': t} for i, t in enumerate(times)]}
    items = p.Request.model_validate(body).instances
    got = []
    for b in (items[:3], items[3:5], items[5:]): got += asyncio.run(p.predict(b))   # three batches, in this order
    ctx = tight.context(items, p.features.fallback(items), {})
    nan = np.full(len(items), np.nan)
    offline = decide(tight.layers, rule_hits(tight.rules, ctx), nan, nan, ctx.ts, ('rules',))
    assert [a['decision'] for a in got] == offline.decision.tolist()
    assert [a['decision'] for a in got] == ['review', 'review', 'block', 'block', 'block', 'review', 'review', 'block']
    over = [a for a in got if a['layer'] == 'overflow']
    assert len(over) == 4 and all(a['reasons'][-1] == 'review queue full (2 cases a day): blocked' for a in over)
    p.queue = ReviewQueue(tmp_path/'queue.sqlite', 2, 'block')   # a restart: day 2's queue is still full
    late = p.Request.model_validate({'instances': [{**NEW_ACCOUNT, 'request_ts': times[-1] + 60}]}).instances
    again = asyncio.run(p.predict(late))
    assert again[0]['layer'] == 'overflow'
    text = p.metrics.exposition().decode()
    assert 'mlsys_review_overflow_total{policy="block"} 5.0' in text and 'mlsys_review_queue_depth 2.0' in text
    assert 'mlsys_review_queue_capacity 2.0' in text
