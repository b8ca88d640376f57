"`mlsys run --scenario recsys` end to end on a small world, and `POST /recommend` on `mlsys serve`: answers, cold start, bad input, a schemathesis fuzz, an index swap under load, and degraded answers without an index."
import json, os, shutil, threading, time, urllib.request
import pandas as pd
import pytest
from conftest import SMALL, assert_refusals, fuzz_routes, mlsys, post, run_record
from mlsys.bench_serve import load_test
from mlsys.server import start_server

pytestmark = [pytest.mark.service, pytest.mark.xdist_group('recommend')]   # one worker: the scenario runs once
RECSYS = ['-p', 'test_days', '2', '-p', 'rank_days', '3', '-p', 'bucket_sessions', '10000']   # windows that fit the 10-day world




@pytest.fixture(scope='module')
def recsys_run(tmp_path_factory):
    "One `mlsys run --scenario recsys` on the small world: the workspace, the process and its run record."
    ws = tmp_path_factory.mktemp('recsys')/'workspace'
    p = mlsys('run', '--scenario', 'recsys', '--workspace', ws, *SMALL, *RECSYS)
    assert p.returncode == 0, p.stderr[-3000:]
    return ws, p, run_record(p)


@pytest.fixture(scope='module')
def served(recsys_run):
    ws = recsys_run[0]
    s = start_server(ws)
    yield ws, s
    s.stop()


def test_scenario_run_contract(recsys_run):
    "run.json as for fraud: every recsys stage succeeded with its artifacts; the recommender is in production; the index and the batch lists exist."
    from mlsys.pipeline import RECSYS_STAGES
    from mlsys.registry import Registry
    ws, p, (run_dir, rec) = recsys_run
    assert run_dir.parent == ws/'runs' and (ws/'runs'/'latest').resolve() == run_dir.resolve()
    assert (rec['status'], rec['failed_stage'], rec['reason']) == ('succeeded', None, None)
    assert [s['name'] for s in rec['stages']] == list(RECSYS_STAGES) and all(s['status'] == 'succeeded' for s in rec['stages'])
    assert all((run_dir/s['notebook']).exists() for s in rec['stages'])
    assert rec['lineage']['config']['scenario'] == 'recsys' and rec['lineage']['config']['params']['n_days'] == 10
    stages = {s['name']: s for s in rec['stages']}
    assert stages['recsys_evaluate']['metrics']['gates_passed'] and stages['recsys_register']['metrics']['stage'] == 'production'
    assert Registry(ws/'models').get('recommender', 'production')['version'] == 1
    assert (ws/'index'/'recommender'/'current').resolve().name == stages['recsys_index']['metrics']['index_version']
    assert json.loads((ws/'index'/'recommender'/'current'/'meta.json').read_text())['kind'] == 'hnsw'   # the served kind
    lists = pd.read_parquet(stages['recsys_batch']['artifacts']['recommendations'])
    assert lists.user_id.nunique() == stages['recsys_batch']['metrics']['users'] > 0
    assert lists.groupby('user_id').size().max() == 10 and (lists.model_version == 'recommender:1').all()
    print({s['name']: s['seconds'] for s in rec['stages']})   # seconds per stage, for the record (-s shows them)


def test_scenario_usage_errors_and_a_failed_stage(tmp_path):
    "A stage or parameter the recsys scenario does not have, and an unknown scenario: usage errors (exit 2); a stage that fails: exit 1, named with its reason."
    assert mlsys('run', '--scenario', 'recsys', '--workspace', tmp_path, '--to', 'train').returncode == 2
    p = mlsys('run', '--scenario', 'recsys', '--workspace', tmp_path, '-p', 'colour', 'red')
    assert p.returncode == 2 and 'unknown parameter(s) colour' in p.stderr
    assert mlsys('run', '--scenario', 'music', '--workspace', tmp_path).returncode == 2
    p = mlsys('run', '--scenario', 'recsys', '--workspace', tmp_path, '--from', 'recsys_evaluate', '--to', 'recsys_evaluate')
    run_dir, rec = run_record(p)
    assert p.returncode == 1 and rec['failed_stage'] == 'recsys_evaluate' and 'run the recsys_train stage' in rec['reason']
    assert (run_dir/'notebooks'/'recsys_evaluate.ipynb').exists()


def test_recommend_answers_and_cold_start(served):
    "Known users get k items from the production recommender, genre filters hold, an unknown user gets the cold-start answer; all logged."
    from mlsys.world import read_table
    ws, s = served
    users = read_table(ws/'lake', 'interactions').user_id.unique()[:5].tolist()
    for u in users:
        code, out = post(s.url('/recommend'), {'user_id': u, 'k': 7, 'request_id': f'r-{u}'})
        (got,) = out['predictions']
        assert code == 200 and len(got['items']) == 7 and not got['degraded'] and got['model_version'] == 'recommender:1'
        assert len({e['item_id'] for e in got['items']}) == 7 and got['index_version'] is not None
    code, out = post(s.url('/recommend'), {'user_id': users[0], 'k': 5, 'genres': ['drama', 'comedy']})
    assert code == 200 and {e['genre'] for e in out['predictions'][0]['items']} <= {'drama', 'comedy'}
    code, out = post(s.url('/recommend'), {'user_id': 'nobody-ever', 'k': 10})
    (cold,) = out['predictions']
    assert code == 200 and len(cold['items']) == 10 and not cold['degraded'], cold
    assert {e['source'] for e in cold['items']} == {'cold_start'}
    from mlsys.monitor import PredictionLog
    for _ in range(50):   # written off the event loop: wait for it
        log = PredictionLog(ws/'monitoring'/'recommendations').read() if (ws/'monitoring'/'recommendations').exists() else None
        if log is not None and {f'r-{u}' for u in users} <= set(log.request_id): break
        time.sleep(0.1)
    mine = log[log.request_id.isin({f'r-{u}' for u in users})]
    assert len(mine) == 5 and not set(mine.user_id) & set(users) and mine['items'].map(len).eq(7).all()


def test_bad_input_gets_4xx_naming_field(served):
    cases = {b'{"user_id": ': (400, 'body', 'malformed JSON'),
             b'{"user_id": "u1", "k": 0}': (422, 'k', 'greater than or equal to 1'),
             b'{"user_id": "u1", "k": 100000}': (422, 'k', 'less than or equal to 100'),
             b'{"user_id": "u1", "k": "5"}': (422, 'k', 'valid integer'),
             b'{"user_id": "u1", "genres": ["opera"]}': (422, 'genres.0', "'drama'"),
             b'{"user_id": "u1", "genres": []}': (422, 'genres', 'at least 1 item'),
             b'{"k": 5}': (422, 'user_id', 'Field required'),
             b'{"user_id": "u1", "colour": "red"}': (422, 'colour', 'Extra inputs are not permitted'),
             b'{"user_id": "u1", "x": "' + b'y' * (1 << 20) + b'"}': (413, 'body', 'at most')}
    assert_refusals(served[1], 'recommend', cases)


def test_schemathesis_fuzz_gives_no_5xx(served):
    "Valid and invalid `/recommend` bodies generated from the server's OpenAPI document: no answer is a 5xx."
    calls, failures = fuzz_routes(served[1], ['/recommend'], examples=60)
    assert len(calls) >= 60 and failures == [], failures[:5]
    assert any(c == 200 for c in calls) and any(400 <= c < 500 for c in calls)


def test_index_swap_while_serving(served):
    "A new index version published under load: every request answered 200, and the answers move to the new version."
    from mlsys.config import Workspace
    from mlsys.recommend import index_root, publish_index, registered
    from mlsys.registry import Registry
    import numpy as np
    from mlsys.retrieval import ANNOY, ItemIndex, build_served
    ws, s = served
    before = post(s.url('/recommend'), {'user_id': 'u000001', 'k': 5})[1]['predictions'][0]['index_version']
    bodies = [json.dumps({'user_id': f'u{i:06d}', 'k': 10}).encode() for i in range(50)]
    result = {}
    load = threading.Thread(target=lambda: result.update(load_test(s.port, '/recommend', bodies, 400, 8, 60)))
    load.start()
    time.sleep(0.2)
    folder, _ = registered(Registry(ws/'models'))
    served = ItemIndex.load(folder/'index')
    assert served.kind == 'hnsw'
    new = publish_index(Workspace(ws), served)
    load.join()
    assert result['errors'] == 0 and result['requests'] == 400, result
    after = post(s.url('/recommend'), {'user_id': 'u000001', 'k': 5})[1]['predictions'][0]
    assert before != new.name and after['index_version'] == new.name and not after['degraded']
    assert (index_root(Workspace(ws))/'current').resolve() == new.resolve()
    # another kind over the same items swaps in the same way; one for another model is refused and the old one serves on
    annoy = publish_index(Workspace(ws), build_served(served.item_ids, np.asarray(served.vectors), ANNOY))
    after = post(s.url('/recommend'), {'user_id': 'u000001', 'k': 5})[1]['predictions'][0]
    assert after['index_version'] == annoy.name and not after['degraded'] and len(after['items']) == 5
    wrong = np.random.default_rng(0).normal(size=(len(served), served.meta['dim'] + 3))
    publish_index(Workspace(ws), build_served(served.item_ids, wrong))
    after = post(s.url('/recommend'), {'user_id': 'u000001', 'k': 5})[1]['predictions'][0]
    assert after['index_version'] == annoy.name and not after['degraded']
    publish_index(Workspace(ws), served)                        # leave the served kind in service for later tests


def test_degraded_without_index(recsys_run, tmp_path):
    "The index folder gone: popular items, flagged `index_unavailable`, never an error; back to normal once it is published again."
    ws = tmp_path/'workspace'
    shutil.copytree(recsys_run[0], ws, symlinks=True)
    shutil.move(ws/'index', tmp_path/'moved-index')
    s = start_server(ws, '--no-prediction-log')
    try:
        code, out = post(s.url('/recommend'), {'user_id': 'u000001', 'k': 6, 'genres': ['action']})
        (got,) = out['predictions']
        assert code == 200 and got['degraded'] and got['degraded_reasons'] == ['index_unavailable'], got
        assert len(got['items']) == 6 and {e['source'] for e in got['items']} == {'popular'} and {e['genre'] for e in got['items']} == {'action'}
        assert 'mlsys_degraded_total{reason="index_unavailable"} 1.0' in urllib.request.urlopen(s.url('/metrics')).read().decode()
        shutil.move(tmp_path/'moved-index', ws/'index')
        code, out = post(s.url('/recommend'), {'user_id': 'u000001', 'k': 6})
        assert code == 200 and not out['predictions'][0]['degraded']
    finally: s.stop()


def test_index_watch_refuses_a_mismatch_naming_both(tmp_path):
    "An HNSW index for another dimension or another item set: refused at load with both sides named; none in service."
    import numpy as np
    from mlsys.recommend import IndexUnavailable, IndexWatch
    from mlsys.retrieval import build_served, publish
    rng, attached = np.random.default_rng(0), []
    publish(build_served(np.arange(60), rng.normal(size=(60, 12))), tmp_path/'dim')
    with pytest.raises(IndexUnavailable, match="dimension 12, the model's embeddings have 8"):
        IndexWatch(tmp_path/'dim', attached.append, dim=8, item_ids=np.arange(60)).check()
    publish(build_served(np.arange(1, 61), rng.normal(size=(60, 8))), tmp_path/'items')
    with pytest.raises(IndexUnavailable, match=r'holds 60 items, the catalogue has 60: 1 catalogue items not in the '
                       r'index \(e.g. \[0\]\), 1 index items not in the catalogue \(e.g. \[60\]\)'):
        IndexWatch(tmp_path/'items', attached.append, dim=8, item_ids=np.arange(60)).check()
    assert attached == []
