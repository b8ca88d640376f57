"Reasons and fairness of fraud decisions on a small synthetic frame (the notebook runs them on the world)."
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

from mlsys.explain import Explainer, factor_text, gate_fairness, group_rates, reasons, report, stability
from mlsys.features import FRAUD_FEATURES
from mlsys.fraud import DEFAULT_RULES, Layers, anomaly_inputs, decide, load_rules, model_inputs, tuned


@pytest.fixture(scope='module')
def fitted():
    rng = np.random.default_rng(0)
    n = 3_000
    cols = [f for f in FRAUD_FEATURES if f not in ('timezone', 'country')]
    ctx = pd.DataFrame(rng.gamma(2, 2, (n, len(cols))), columns=cols)
    ctx['amount'] = rng.gamma(2, 40, n)
    ctx['account_age_days'], ctx['impossible_travel'], ctx['ip_country'] = rng.uniform(0, 900, n), 0.0, 'DE'
    ctx['device_flagged'] = ctx['ip_flagged'] = 0.0
    ctx['transaction_id'], ctx['user_id'] = np.arange(n), [f'u{i % 50:06d}' for i in range(n)]
    ctx['ts'] = pd.Timestamp('2026-02-01', tz='UTC') + pd.to_timedelta(np.arange(n), 'min')
    y = (ctx.amount_to_avg_30d > 8) | (rng.random(n) < 0.01)
    model = HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(model_inputs(ctx), y)
    detector = IsolationForest(n_estimators=50, random_state=0).fit(anomaly_inputs(ctx))
    layers = Layers(load_rules([tuned(r) for r in DEFAULT_RULES]), model, detector, 0.3, 0.9, 1.0)
    return layers, ctx, y


def test_reasons_name_the_driving_factor(fitted):
    layers, ctx, y = fitted
    ex = Explainer(layers)
    hits, score, anomaly = layers.scores(ctx)
    d = decide(layers, hits, score, anomaly)
    flagged = np.flatnonzero(d.layer.to_numpy() == 'model')[:20]
    why = reasons(layers, ex, ctx.iloc[flagged], d.iloc[flagged])
    named = np.mean([any('x the 30-day average' in r for r in w) for w in why])
    assert named >= 0.8, why   # the factor the labels were made from
    approved = np.flatnonzero(d.decision.to_numpy() == 'approve')[:5]
    assert reasons(layers, ex, ctx.iloc[approved], d.iloc[approved]) == [[]] * 5
    assert stability(ex, ctx.iloc[flagged]) >= 0.8
    text = report(ctx.iloc[flagged[0]], 'review', 'model', why[0])
    assert 'held for manual review by the fraud model' in text and 'may contest' in text


def test_factor_text_and_fairness_gate():
    assert factor_text('user_tx_5m', 4.0) == '4 purchases in 5 minutes'
    assert factor_text('device_users_30d', np.nan) == 'no device users 30d on record'
    groups = pd.DataFrame({'age_bucket': ['18-24'] * 2000 + ['25-34'] * 2000 + [None] * 10})
    y = np.zeros(4010, bool)
    fair = np.where(np.arange(4010) % 50 == 0, 'review', 'approve')
    rates = group_rates(fair, y, groups)
    assert set(rates['age_bucket'].index) == {'18-24', '25-34', 'unknown'}
    assert gate_fairness(rates).passed
    skewed = np.where((np.arange(4010) < 2000) & (np.arange(4010) % 5 == 0), 'block', fair)
    gate = gate_fairness(group_rates(skewed, y, groups), max_ratio=3.0)
    assert not gate.passed and gate.value == pytest.approx(10.0) and '18-24 / 25-34' in gate.detail
    thin = gate_fairness(rates, min_group=5_000)
    assert not thin.passed and thin.value is None and thin.detail.startswith('insufficient evidence')
