"Edge cases of `mlsys.evaluate`: bad inputs, exact values on hand-made data, and the side effects the gates must not leave."
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from mlsys.evaluate import (Costs, GateFailed, GateResult, _draw_counts, _slots, _weighted_auc_ap, add_slices, bootstrap_ci,
                            MIN_POSITIVES, check_gates, choose_thresholds, classification_metrics, expected_calibration_error, expected_cost,
                            gate_min_quality, gate_no_regression, gate_no_regression_paired, gate_slice_gap,
                            _paired_ap_draws, mean_average_precision, mrr, ndcg_at_k,
                            recall_at_k, reliability_diagram, slice_report, worst_gap)


# --- classification metrics -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('y, p, message', [
    ([1, 1, 1], [0.1, 0.5, 0.9], 'one class only (all 3 labels are 1)'),
    ([0, 1], [0.1], 'same length'),
    ([0, 1, 2], [0.1, 0.2, 0.3], 'binary labels'),
    ([0, 1], [0.1, np.inf], '1 NaN or infinite scores (first at position 1)'),
    ([], [], 'empty'),
])
def test_bad_inputs_are_named(y, p, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')): classification_metrics(y, p)


def test_metrics_at_thresholds():
    m = classification_metrics(np.array([True, False, True, False]), [0.9, 0.8, 0.3, 0.1], thresholds=(0.5, 0.95))
    assert (m['rows'], m['positives']) == (4, 2)
    assert m['precision@0.5'] == 0.5 and m['recall@0.5'] == 0.5 and m['f1@0.5'] == 0.5
    assert m['precision@0.95'] == 0.0 and m['f1@0.95'] == 0.0       # nothing flagged: precision 0, not a division error
    assert m['auroc'] == pytest.approx(0.75)


# --- bootstrap ----------------------------------------------------------------------------------------------------------

def test_slot_counts_give_sklearn_metrics_on_explicit_resamples():
    rng = np.random.default_rng(0); y = (rng.random(400) < 0.1).astype(int); p = np.round(rng.random(400) / 2 + 0.3 * y, 1)  # many ties
    slot, n = _slots(y, p)
    assert n < 20                                                     # 400 rows collapse into a handful of slots
    for _ in range(5):
        idx = rng.integers(0, 400, 400); w = np.bincount(idx, minlength=400)
        auc, ap = _weighted_auc_ap(np.bincount(slot, w * y, n)[None], np.bincount(slot, w * (1 - y), n)[None])
        assert auc[0] == pytest.approx(roc_auc_score(y[idx], p[idx]), abs=1e-12)
        assert ap[0] == pytest.approx(average_precision_score(y[idx], p[idx]), abs=1e-12)


def test_slots_of_distinct_scores():
    slot, n = _slots(np.array([0, 0, 1, 0, 0, 1, 1, 0]), np.arange(8.0))   # runs of negatives merge, each positive is its own slot
    assert slot.tolist() == [0, 0, 1, 2, 2, 3, 4, 5] and n == 6
    counts = _draw_counts(np.random.default_rng(0), np.array([2.0, 0.0, 3.0]), 4)
    assert counts.shape == (4, 3) and (counts.sum(1) == 5).all() and (counts[:, 1] == 0).all()


def test_bootstrap_is_seeded_stratified_and_checked():
    rng = np.random.default_rng(1); y = rng.random(2000) < 0.02; p = rng.random(2000) + y
    a, b = bootstrap_ci('auprc', y, p, n=300, seed=7), bootstrap_ci('auprc', y, p, n=300, seed=7)
    assert a == b and a[1] <= a[0] <= a[2]
    point, lo, hi = bootstrap_ci('auroc', [0] * 99 + [1], np.linspace(0, 1, 100), n=200)   # one positive: still both classes
    assert point == lo == hi == 1.0
    with pytest.raises(ValueError, match="unknown metric 'f2'"): bootstrap_ci('f2', y, p)
    with pytest.raises(ValueError, match='one class only'): bootstrap_ci('auroc', [0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match='no bootstrap resample had both classes'):
        bootstrap_ci(roc_auc_score, [0] * 999 + [1], np.arange(1000.0), n=2, seed=19, stratify=False)   # a seed whose two resamples miss the positive


def test_bootstrap_with_a_function():
    y = np.r_[np.zeros(90), np.ones(10)]; p = np.linspace(0, 1, 100)
    point, lo, hi = bootstrap_ci(lambda y, p: float(p[y == 1].mean()), y, p, n=100)
    assert point == pytest.approx(p[90:].mean()) and lo < point < hi


# --- calibration --------------------------------------------------------------------------------------------------------

def test_ece_exact_values(tmp_path):
    assert expected_calibration_error([0, 0, 0, 1], [0.25] * 4) == 0.0
    assert expected_calibration_error([0, 0], [0.0, 0.0]) == 0.0                 # one class is fine for calibration
    assert expected_calibration_error([0, 1], [0.9, 0.9], bins=10) == pytest.approx(0.4)
    with pytest.raises(ValueError, match='probabilities in'): expected_calibration_error([0, 1], [-0.1, 0.5])
    reliability_diagram([0, 1, 0, 1], {'a': [0.1, 0.9, 0.2, 0.7], 'b': [0.5] * 4}, path=tmp_path/'r.png')
    assert (tmp_path/'r.png').stat().st_size > 0


# --- ranking ------------------------------------------------------------------------------------------------------------

def test_ranking_hand_computed():
    ranked, relevant = [['a', 'b', 'c', 'd'], ['x', 'y', 'z']], [{'b', 'd'}, {'x'}]
    assert recall_at_k(ranked, relevant, k=2) == pytest.approx(0.75)
    assert ndcg_at_k(ranked, relevant, k=4) == pytest.approx((1 + (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))) / 2)
    assert mrr(ranked, relevant) == pytest.approx(0.75) and mean_average_precision(ranked, relevant) == pytest.approx(0.75)
    # k cuts the list: user 1 has no hit in the top 1
    assert mrr(ranked, relevant, k=1) == pytest.approx(0.5) and ndcg_at_k(ranked, relevant, k=1) == pytest.approx(0.5)
    # MAP@k divides by min(k, |relevant|): two hits in the top 2 of three relevant items is perfect at k=2
    assert mean_average_precision([['a', 'b', 'c']], [{'a', 'b', 'q'}], k=2) == 1.0
    assert mean_average_precision([['a', 'b', 'c']], [{'a', 'b', 'q'}]) == pytest.approx(2 / 3)
    # the ideal DCG only counts as many positions as there are relevant items
    assert ndcg_at_k([['a', 'z', 'y']], [{'a'}], k=3) == 1.0


def test_ranking_inputs():
    assert recall_at_k({'u': ['a'], 'v': ['b']}, {'u': {'a'}, 'v': {'c'}, 'w': set()}, k=5) == 0.5
    assert recall_at_k({}, {'u': {'a'}}) == 0.0                                   # a user with no list has no hits
    with pytest.raises(ValueError, match='2 ranked lists but 1 relevant sets'): ndcg_at_k([['a'], ['b']], [{'a'}])
    with pytest.raises(ValueError, match='ranked must be one too'): mrr([['a']], {'u': {'a'}})
    with pytest.raises(ValueError, match='k must be at least 1'): recall_at_k([['a']], [{'a'}], k=0)
    with pytest.raises(ValueError, match="user 'u' repeats items"): recall_at_k({'u': ['a', 'a']}, {'u': {'a'}})


# --- slices -------------------------------------------------------------------------------------------------------------

USERS = pd.DataFrame({'user_id': ['a', 'b'], 'country': ['US', 'GB'], 'timezone': ['', ''], 'device': ['ios', 'android'],
                      'signup_date': pd.to_datetime(['2026-01-01', '2026-01-01'], utc=True), 'age_bucket': ['', '']})


def test_tenure_is_measured_at_event_time():
    tx = pd.DataFrame({'user_id': ['a', 'a', 'b'], 'country': ['FR', 'FR', 'GB'],
                       'event_timestamp': pd.to_datetime(['2026-01-30 23:59', '2026-01-31 00:00', '2026-03-01 00:00'], utc=True)},
                      index=[10, 11, 12])
    out = add_slices(tx, USERS)
    assert out.tenure.tolist() == ['new', 'tenured', 'tenured']         # 30 days exactly is no longer new
    assert out.country.tolist() == ['FR', 'FR', 'GB'] and out.device.tolist() == ['ios', 'ios', 'android']   # frame's country kept
    assert out.index.tolist() == [10, 11, 12] and 'tenure' not in tx    # rows, order and index kept; input untouched
    with pytest.raises(ValueError, match=r"\['signup_date'\]"): add_slices(tx, USERS.drop(columns='signup_date'))
    with pytest.raises(ValueError, match='frame.event_timestamp'): add_slices(tx.drop(columns='event_timestamp'), USERS)


def test_slice_report_support_and_gaps():
    f = pd.DataFrame({'is_fraud': [1, 0, 0, 0] * 100 + [0] * 20, 'score': [0.9, 0.1, 0.2, 0.95] * 50 + [0.9, 0.1, 0.2, 0.3] * 50 + [0.3] * 20,
                      'grp': ['x'] * 200 + ['y'] * 200 + ['clean'] * 20})   # x ranks a good customer above each fraud, y is perfect
    rep = slice_report(f, by=['grp'], threshold=0.5, min_rows=50, min_pos=10).set_index('value')
    assert rep.loc['clean', ['positives', 'enough']].tolist() == [0, False] and math.isnan(rep.loc['clean', 'auroc'])
    assert rep.loc['x', 'recall'] == 1.0 and rep.loc['x', 'enough']
    g = worst_gap(rep.reset_index(), 'auprc'); assert g['value'] == 'x' and g['gap'] > 0
    with pytest.raises(ValueError, match=r"needs columns \['nope'\]"): slice_report(f, by=['nope'])
    with pytest.raises(ValueError, match="unknown metric 'f1'"): worst_gap(rep.reset_index(), 'f1')
    failed = gate_slice_gap(rep.reset_index().assign(enough=False), 0.1)
    assert not failed.passed and 'no slice has enough support' in failed.detail     # a gate that cannot judge fails closed


# --- costs --------------------------------------------------------------------------------------------------------------

def test_costs_are_validated():
    with pytest.raises(ValueError, match='review_catch at most 1'): Costs(review_catch=1.5)
    with pytest.raises(ValueError, match="'review': -1"): Costs(review=-1)


def test_expected_cost_counts_and_partial_reviews():
    y, p, a = [1, 1, 0, 0, 1], [0.99, 0.6, 0.6, 0.1, 0.2], [100, 40, 30, 20, 7]
    c = expected_cost(y, p, a, 0.5, 0.9, Costs(review_catch=0.5))
    assert (c['block'], c['review'], c['approve']) == (1, 2, 2) and c['block'] + c['review'] + c['approve'] == c['rows']
    assert c['fraud_loss_usd'] == pytest.approx(7 + 0.5 * 40) and c['review_usd'] == 10 and c['false_block_usd'] == 0
    assert c['per_1000'] == pytest.approx(1000 * (27 + 10) / 5)
    with pytest.raises(ValueError, match='amount must be finite and >= 0; 1 values'): expected_cost(y, p, [1, 2, 3, 4, -5], 0.5, 0.9)
    with pytest.raises(ValueError, match='one amount per transaction'): expected_cost(y, p, [1, 2], 0.5, 0.9)


@pytest.mark.parametrize('costs', [Costs(), Costs(review_catch=0.6, fraud_loss=0.8), Costs(false_block=2, review=20)])
def test_choose_thresholds_matches_brute_force(costs):
    rng = np.random.default_rng(5); y = rng.random(200) < 0.15
    p = np.round(np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1), 2); a = rng.lognormal(3.5, 1, 200)
    grid = np.r_[np.unique(p), np.inf]
    brute = min(expected_cost(y, p, a, r, b, costs)['total_usd'] for r in grid for b in grid if r <= b)
    r, b = choose_thresholds(y, p, a, costs)
    assert r <= b and expected_cost(y, p, a, r, b, costs)['total_usd'] == pytest.approx(brute)


def test_cheap_fraud_is_never_worth_acting_on():
    assert choose_thresholds([1, 0, 1, 0], [0.9, 0.95, 0.8, 0.85], [1, 50, 2, 50]) == (math.inf, math.inf)   # $3 of fraud vs $25 blocks, $5 reviews


# --- gates --------------------------------------------------------------------------------------------------------------

def test_gate_results_and_failure_message():
    first = gate_no_regression(0.6, None)
    assert first.passed and first.threshold is None and first.detail == 'no production model'
    assert gate_no_regression(0.68, 0.70, tolerance=0.02).passed and not gate_no_regression(0.6799, 0.70, tolerance=0.02).passed
    q = gate_min_quality({'auprc': 0.3, 'rows': 4000, 'positives': 40}, 0.5)
    assert str(q).startswith('FAIL min quality: 0.3 (threshold 0.5)')
    ok = GateResult('latency p99', True, 3.0, 100.0)
    assert check_gates([ok, first]) == [ok, first]
    with pytest.raises(GateFailed) as e: check_gates([ok, q, gate_no_regression(0.3, 0.7)])
    assert isinstance(e.value, ValueError) and len(e.value.results) == 3
    assert str(e.value).startswith('2 of 3 model gates failed: min quality (value 0.3, threshold 0.5') and 'no regression (value 0.3, threshold 0.68' in str(e.value)


@pytest.mark.parametrize('positives', [0, 1, MIN_POSITIVES - 1])
def test_gates_refuse_to_judge_thin_windows(positives):
    "Below MIN_POSITIVES the quality, regression and slice gates fail as 'insufficient evidence', however good the numbers; from it they judge."
    thin = [gate_min_quality({'auprc': 1.0, 'rows': 55, 'positives': positives}), gate_no_regression(0.9, 0.5, positives=positives)]
    report = pd.DataFrame({'slice': ['all', 'device'], 'value': ['all', 'ios'], 'rows': 5000, 'positives': [positives, positives], 'auroc': [0.9, 0.9],
                           'enough': [True, True]})
    thin.append(gate_slice_gap(report, max_gap=0.1))
    thin.append(gate_no_regression_paired(np.r_[np.ones(max(positives, 1)), np.zeros(200)], np.r_[np.ones(max(positives, 1)), np.zeros(200)] * 3 + np.linspace(0, 1, max(positives, 1) + 200),
                                          np.linspace(0, 1, max(positives, 1) + 200), tolerance=0.1))
    for g in thin[:3] + (thin[3:] if positives else []):
        assert not g.passed and g.detail.startswith('insufficient evidence') and f'judges from {MIN_POSITIVES}' in g.detail, g
    judged = [gate_min_quality({'auprc': 1.0, 'rows': 55, 'positives': MIN_POSITIVES}), gate_no_regression(0.9, 0.5, positives=MIN_POSITIVES),
              gate_slice_gap(report.assign(positives=MIN_POSITIVES), max_gap=0.1)]
    assert all(g.passed for g in judged), judged


def test_paired_regression_gate():
    "The draws are paired (both models on the same resampled rows); an equally good model passes, a worse one is 'worse', a thin window is not judged."
    rng = np.random.default_rng(0); y = np.r_[np.ones(40), np.zeros(960)]; a, b = y + rng.normal(size=1000), y + rng.normal(size=1000)
    near = a + rng.normal(scale=0.01, size=1000)   # a model that differs from `a` on a few close calls
    paired_sd, own_width = _paired_ap_draws(y, near, a, 200, 0).std(), np.subtract(*bootstrap_ci('auprc', y, a, n=200)[:0:-1])
    assert paired_sd < 0.01 < 0.1 < own_width   # resampled separately, the difference would spread as wide as either AUPRC's interval
    d = _paired_ap_draws(y, a, b, 400, 0)
    assert abs(np.median(d) - (average_precision_score(y, a) - average_precision_score(y, b))) < 0.05
    y2 = np.r_[np.ones(200), np.zeros(4800)]   # 200 positives; two models of the same skill, and a weaker one
    for s in range(3):
        r = np.random.default_rng(s); prod, equal, weaker = (k * y2 + r.normal(size=5000) for k in (2, 2, 1))
        assert gate_no_regression_paired(y2, equal, prod, tolerance=0.1).detail.startswith('no worse')
        assert gate_no_regression_paired(y2, weaker, prod, tolerance=0.1).detail.startswith('worse')
    thin = np.r_[np.ones(3), np.zeros(997)]   # three positives: a window that cannot tell two models apart
    g = gate_no_regression_paired(thin, thin * 2.5 + rng.normal(size=1000), thin * 3 + rng.normal(size=1000), tolerance=0.05, min_positives=1)
    assert not g.passed and g.threshold > g.value and 'on 1,000 rows with 3 positives' in g.detail
    with pytest.raises(ValueError, match='same length'): gate_no_regression_paired(y, a, b[:10])


def test_score_and_latency_leave_no_side_effects():
    import torch
    from mlsys.evaluate import gate_latency, run_gates, score
    from mlsys.train import Preprocessor, TabularClassifier
    rng = np.random.default_rng(0); n = 400
    f = pd.DataFrame({'amount': rng.lognormal(3, 1, n), 'country': rng.choice(['US', 'GB'], n), 'device': rng.choice(['ios', 'android'], n),
                      'tenure': 'tenured', 'is_fraud': rng.random(n) < 0.1})
    pre = Preprocessor(['amount'], ['country']).fit(f)
    torch.manual_seed(0); model = TabularClassifier(1, pre.cardinalities)
    model.train(); threads = torch.get_num_threads()
    p = score(model, pre, f, batch_size=64)
    assert p.shape == (n,) and ((p > 0) & (p < 1)).all() and model.training
    with torch.no_grad(): model.eval(); expected = torch.sigmoid(model(*pre.transform(f))).numpy(); model.train()
    np.testing.assert_allclose(p, expected, rtol=1e-6)
    g = gate_latency(model, pre, f, budget_ms_p99=1e9, n=20, warmup=2)
    assert g.passed and g.value > 0 and torch.get_num_threads() == threads and model.training
    with pytest.raises(ValueError, match='at least one row'): gate_latency(model, pre, f.iloc[:0])
    torch.manual_seed(1); prod = TabularClassifier(1, pre.cardinalities)   # another untrained network: production, scored on the same rows
    res = run_gates(model, pre, f, production=(prod, pre), min_auprc=0.0, max_gap=1.0, min_rows=10, min_pos=2, latency_n=10)
    assert [r.name for r in res] == ['min quality', 'no regression', 'slice gap', 'latency p99']
    assert res[1].value == pytest.approx(average_precision_score(f.is_fraud, p))
    assert res[1].threshold == pytest.approx(average_precision_score(f.is_fraud, score(prod, pre, f)) - 0.02) != res[1].value - 0.02
