"Layered fraud defence: rules as data, the decision and its review capacity, costs (no world: the notebook runs it)."
import json

import numpy as np
import pandas as pd
import pytest

from mlsys.fraud import (DEFAULT_RULES, GEO_IP, Layers, RuleError, decide, decision_cost, ip_country, load_rules,
                         review_capacity, rule_context, rule_hits, rule_reasons, tuned)

RULES = load_rules([tuned(r) for r in DEFAULT_RULES])


def test_rule_file_round_trip_and_refusals(tmp_path):
    path = tmp_path/'rules.json'
    path.write_text(json.dumps(DEFAULT_RULES))
    assert [r.name for r in load_rules(path)] == [r['name'] for r in DEFAULT_RULES]
    bad_field = [{**DEFAULT_RULES[0], 'name': 'typo', 'when': [{'field': 'amout', 'op': '>', 'value': 1}]}]
    with pytest.raises(RuleError, match=r"rule 'typo': unknown field\(s\) \['amout'\]"): load_rules(bad_field)
    bad_op = [{**DEFAULT_RULES[0], 'name': 'odd', 'when': [{'field': 'amount', 'op': '=>', 'value': 1}]}]
    with pytest.raises(RuleError, match="rule 'odd'.*op"): load_rules(bad_op)
    bad_reason = [{**DEFAULT_RULES[0], 'name': 'tmpl', 'reason': 'spent {amonut}'}]
    with pytest.raises(RuleError, match=r"rule 'tmpl'.*amonut"): load_rules(bad_reason)
    with pytest.raises(RuleError, match='repeated'): load_rules(DEFAULT_RULES[:1] * 2)
    with pytest.raises(RuleError, match="rule 'x': severity=3: unknown key"): load_rules([{**DEFAULT_RULES[0], 'name': 'x', 'severity': 3}])


def test_hits_ignore_missing_values_and_reasons_fill_templates():
    ctx = pd.DataFrame({'user_tx_5m': [np.nan, 5], 'amount_to_avg_30d': [np.nan, 12.0], 'amount': [900.0, 300.0],
                        'impossible_travel': [0, 1], 'device_flagged': [0, 1], 'device_users_30d': [1, 3],
                        'ip_flagged': [0, 0], 'account_age_days': [np.nan, 0.5], 'ip_country': ['DE', 'FR']})
    hits = rule_hits(RULES, ctx)
    assert not hits.loc[0].any()                      # a missing value never fires a rule
    assert hits.loc[1].sum() == 5
    reasons = rule_reasons(RULES, hits, ctx)[1]
    assert 'amount_spike: amount 300, 12.0x the 30-day average' in reasons
    assert any(r.startswith('impossible_travel: IP country FR') for r in reasons)


def test_decision_order_capacity_and_cost():
    hits = pd.DataFrame({r.name: [False] * 5 for r in RULES})
    hits.loc[4, 'blocklisted_device'] = True
    layers = Layers(RULES, None, None, review_t=0.3, block_t=0.9, anomaly_t=1.0, reviews_per_day=2)
    score, anomaly = np.array([0.95, 0.5, 0.4, 0.1, 0.1]), np.array([0, 0, 0, 3, 0])
    ts = pd.Series(pd.to_datetime(['2026-01-01 09:00'] * 5, utc=True))
    d = decide(layers, hits, score, anomaly, ts)
    assert d.decision.tolist() == ['block', 'review', 'review', 'approve', 'block']
    assert d.layer.tolist() == ['model', 'model', 'model', 'overflow', 'rules']   # the anomaly case waits
    only_model = decide(layers, hits, score, anomaly, use=('model',))
    assert only_model.layer.tolist() == ['model', 'model', 'model', 'none', 'none']
    assert review_capacity(2, hours_per_day=8, minutes_per_case=4) == 240
    cost = decision_cost(d.decision, [True, False, True, True, False], [100, 20, 50, 30, 10])
    assert cost['total_usd'] == 30 + 2 * 5 + 25        # the approved fraud, two reviews, one good customer blocked
    assert cost['recall'] == pytest.approx(2 / 3)


def test_context_is_point_in_time():
    tx = pd.DataFrame({'transaction_id': [1, 2, 3, 4], 'user_id': ['a', 'a', 'b', 'a'],
                       'device_id': ['d1', 'd2', 'd1', 'd1'], 'channel': 'web',
                       'ip': ['7.0.0.1', '9.0.0.1', '7.0.0.2', '7.0.0.3'],
                       'ts': pd.to_datetime(['2026-01-01 10:00', '2026-01-01 11:00', '2026-01-02 00:00', '2026-01-09 00:00'],
                                            utc=True)})
    labels = pd.DataFrame({'transaction_id': [1], 'is_fraud': [True],
                           'available_at': pd.to_datetime(['2026-01-05'], utc=True)})
    users = pd.DataFrame({'user_id': ['a', 'b'], 'signup_date': pd.to_datetime(['2025-12-01', '2026-01-01'], utc=True)})
    ctx = rule_context(tx[['transaction_id']], tx, labels, users)
    assert ctx.device_flagged.tolist() == [0, 0, 0, 1]             # only after the label arrived
    assert ctx.impossible_travel.tolist() == [0, float(GEO_IP[7] != GEO_IP[9]), 0, 0]
    assert list(ip_country(['7.1.1.1'])) == [GEO_IP[7]]


def test_arrival_queue_overflow_policy_and_the_graph_layer():
    from dataclasses import replace
    hits = pd.DataFrame({r.name: [False] * 4 for r in RULES})
    layers = Layers(RULES, None, None, review_t=0.3, block_t=0.9, anomaly_t=1.0, reviews_per_day=1, queue='arrival',
                    overflow='block')
    score, graph = np.array([0.5, 0.5, 0.1, 0.1]), np.array([0, 0, 1, 2])
    ts = pd.Series(pd.to_datetime(['2026-01-01 09:00', '2026-01-01 08:00', '2026-01-01 10:00', '2026-01-02 09:00'],
                                  utc=True))
    d = decide(layers, hits, score, np.zeros(4), ts, ('rules', 'model', 'graph'), graph)
    assert d.decision.tolist() == ['block', 'review', 'block', 'block']     # 08:00 came first; the rest of day 1 waits
    assert d.layer.tolist() == ['overflow', 'model', 'overflow', 'graph']
    assert decide(layers, hits, score, np.zeros(4), ts, ('rules', 'model'), graph).layer.tolist()[2:] == ['none', 'none']
    ranked = decide(replace(layers, queue='priority', overflow='approve'), hits, score, np.zeros(4), ts,
                    ('rules', 'model', 'graph'), graph)
    assert ranked.decision.tolist() == ['review', 'approve', 'approve', 'block']   # hindsight: ties keep the first row
