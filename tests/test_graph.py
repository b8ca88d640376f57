"Graph features: component sizes, point-in-time labels (no leak from the future), the Feast round trip (no world)."
import numpy as np
import pandas as pd
import pytest

from mlsys.graph import (GRAPH_FEATURES, add_graph_views, confirmed_fraud, day_graph, graph_edges, graph_nodes,
                         graph_tables, leaks, materialize_graph, nx_graph, online_graph)

START = pd.Timestamp('2026-01-05', tz='UTC')
day = lambda d, h=12: START + pd.Timedelta(days=d, hours=h)
# u1-u2 share device dA; u3-u4 share IP 9.9.9.9 from day 2; u5 alone. u1's day-0 purchase is fraud, known on day 3.
TX = pd.DataFrame({'transaction_id': [1, 2, 3, 4, 5, 6, 7],
                   'user_id': ['u1', 'u2', 'u3', 'u4', 'u2', 'u2', 'u5'],
                   'device_id': ['dA', 'dA', 'dB', 'dC', 'dA', 'dA', 'dE'],
                   'ip': ['1.1.1.1', '2.2.2.2', '9.9.9.9', '9.9.9.9', '2.2.2.2', '2.2.2.2', '5.5.5.5'],
                   'ts': [day(0), day(1), day(1), day(2), day(2), day(4), day(4)]})
LABELS = pd.DataFrame({'transaction_id': TX.transaction_id, 'is_fraud': [True] + [False] * 6,
                       'available_at': [day(3)] + [day(40)] * 6})


def test_component_sizes_match_networkx_and_hand_count():
    import networkx as nx
    (u, d, i), keys = graph_nodes(TX)
    edges, fraud = graph_edges(TX, START), confirmed_fraud(TX, LABELS, START)
    n, nu = sum(map(len, keys)), len(keys[0])
    for k, expected in [(1, [2, 2, 1, 0, 0]), (2, [2, 2, 2, 2, 0]), (4, [2, 2, 2, 2, 1])]:
        g = day_graph(edges, fraud, n, nu, len(keys[1]), k)
        seen = set(nx_graph(edges, k).nodes)
        sizes = {v: sum(x < nu for x in c) for c in nx.connected_components(nx_graph(edges, k)) for v in c}
        assert [sizes.get(v, 0) for v in range(nu)] == expected
        assert all(g['component_users'][v] == sizes[v] for v in seen)


def test_a_label_arriving_after_the_transaction_is_not_used():
    t = graph_tables(TX, LABELS, START, 6)['user_graph'].set_index(['user_id', 'event_timestamp'])
    assert t.loc[('u2', START + pd.Timedelta(days=3)), 'user_component_fraud'] == 0   # end of day 2: not yet arrived
    assert t.loc[('u2', START + pd.Timedelta(days=4)), 'user_fraud_2hop'] == 1        # end of day 3: arrived
    for cut in range(1, 6):
        assert leaks(TX, LABELS, START, 6, START + pd.Timedelta(days=cut)) == 0
    careless = lambda tx, lab, s, n: graph_tables(tx, lab.assign(available_at=tx.ts.to_numpy()), s, n)
    assert leaks(TX, LABELS, START, 6, START + pd.Timedelta(days=2), careless) > 0   # the check catches a leak


def test_feast_round_trip_offline_equals_online(tmp_path):
    from feast import Entity
    from mlsys.features import feast_objects, open_store, store_yaml
    from mlsys.pit import fast_training_set, fraud_entities
    (tmp_path/'data').mkdir()
    (tmp_path/'feature_store.yaml').write_text(store_yaml('sqlite', 'graph_test'))
    store = open_store(tmp_path)
    store.apply([o for o in feast_objects(tmp_path) if isinstance(o, Entity)])
    refs = add_graph_views(store, graph_tables(TX, LABELS, START, 6))
    assert {v.name for v in store.list_feature_views()} == {'user_graph', 'device_graph'}
    offline = fast_training_set(store, fraud_entities(TX.assign(merchant_id=0, amount=1.0)), refs)[GRAPH_FEATURES]
    assert offline.loc[4, 'user_component_fraud'] == 0 and offline.loc[5, 'user_component_fraud'] == 1
    assert offline.loc[6].isna().all()                # u5 and dE appear on day 4: no snapshot yet
    materialize_graph(store, START + pd.Timedelta(days=4, seconds=1))
    online = online_graph(store, TX.iloc[[5, 6]])
    np.testing.assert_array_equal(online.fillna(-1).to_numpy(float), offline.iloc[[5, 6]].fillna(-1).to_numpy(float))


def test_missing_feature_column_is_refused(tmp_path):
    from mlsys.features import FeatureDefinitionError
    tables = graph_tables(TX, LABELS, START, 6)
    tables['user_graph'] = tables['user_graph'].drop(columns='user_fraud_2hop')
    with pytest.raises(FeatureDefinitionError, match="'user_graph'.*user_fraud_2hop"):
        add_graph_views(type('S', (), {'repo_path': str(tmp_path), 'list_entities': lambda self: []})(), tables)


def test_the_graph_layer_reads_the_features_point_in_time(tmp_path):
    "`14b_defence`'s graph layer on the served values: u2's device shares u1's fraud only once its label arrived."
    from feast import Entity
    from mlsys.defence import GRAPH_SIGNALS, GraphCheck, graph_verdict
    from mlsys.features import feast_objects, open_store, store_yaml
    from mlsys.pit import fast_training_set, fraud_entities
    (tmp_path/'data').mkdir()
    (tmp_path/'feature_store.yaml').write_text(store_yaml('sqlite', 'graph_layer_test'))
    store = open_store(tmp_path)
    store.apply([o for o in feast_objects(tmp_path) if isinstance(o, Entity)])
    refs = add_graph_views(store, graph_tables(TX, LABELS, START, 6))
    offline = fast_training_set(store, fraud_entities(TX.assign(merchant_id=0, amount=1.0)), refs)[GRAPH_FEATURES]
    check = GraphCheck(feature='device_fraud_nbrs', threshold=1, action='review',
                       reason=GRAPH_SIGNALS['device_fraud_nbrs'])
    assert graph_verdict([check], offline).tolist() == [0, 0, 0, 0, 0, 1, 0]   # u2 on day 4 only: dA's u1 confirmed
    assert check.says(offline.loc[5, 'device_fraud_nbrs']) == 'shares a device with 1 account confirmed as fraud'
    materialize_graph(store, START + pd.Timedelta(days=4, seconds=1))
    assert graph_verdict([check], online_graph(store, TX.iloc[[5, 6]])).tolist() == [1, 0]   # served: the same
