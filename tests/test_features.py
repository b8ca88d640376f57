"The feature stage end to end: the job's artifacts, a real Redis online store, and bad input on the serving path."
import json, os, warnings
import pandas as pd
import pytest
from conftest import mlsys, run_record
from mlsys.features import (FeatureDefinitionError, build_repo, check_refs, feature_tables, materialize, online_features,
                            open_store, push_velocity)
from mlsys.parity import parity_check, parity_gate
from mlsys.world import read_table, simulate, write_lake

warnings.filterwarnings('ignore')


def test_features_stage_artifacts(production_ws, tmp_path):
    # the shared full run on the small world (conftest) ran this stage third; its record and folders are read, a private copy rerun
    ws, p = production_ws(tmp_path/'workspace'), production_ws.original_proc
    assert p.returncode == 0, p.stderr
    run_dir, rec = run_record(p)
    st = rec['stages'][2]
    assert st['name'] == 'features' and st['metrics']['parity_pairs'] >= 1000 and st['metrics']['parity_max_abs_diff'] <= 1e-6
    assert json.loads((run_dir/'features'/'parity.json').read_text())['passed']
    assert (run_dir/'features'/'skew.png').stat().st_size > 0 and (ws/'monitoring'/'served_features.parquet').exists()
    cur = ws/'features'/'current'
    assert cur.is_symlink() and (cur/'feature_store.yaml').exists() and (cur/'repo.py').exists()
    # a rerun on the same lake rebuilds, proves parity again and swaps in atomically; the old build is torn down
    p = mlsys('run', '--workspace', ws, '--from', 'features', '--to', 'features')
    assert p.returncode == 0, p.stderr
    assert len(list((ws/'features'/'builds').iterdir())) == 1


@pytest.fixture(scope='module')
def small_world(tmp_path_factory):
    d = tmp_path_factory.mktemp('w'); w = simulate(seed=3, n_days=12); man = write_lake(w, d/'lake')
    return d, w, man, feature_tables(d/'lake')


def test_serving_path_bad_input(small_world):
    d, w, man, tables = small_world
    store = open_store(build_repo(d/'features', tables))
    materialize(store, pd.Timestamp(man['as_of'])); push_velocity(store, tables['user_velocity'], pd.Timestamp(man['as_of']))
    tx = read_table(d/'lake', 'transactions').tail(2)
    req = pd.concat([tx, tx.head(1).assign(user_id='u-nobody', merchant_id=123456, device_id='?')], ignore_index=True)
    out = online_features(store, req)                       # never raises for an unknown key
    assert out.missing.tolist() == [False, False, True] and out.user_tx_5m.iloc[2] == 0
    with pytest.raises(FeatureDefinitionError, match="unknown feature view 'nope'"): check_refs(store, ['nope:x'])
    with pytest.raises(FeatureDefinitionError, match="table has no column 'event_timestamp'"):
        build_repo(d/'bad', {**tables, 'user_spend': tables['user_spend'].drop(columns='event_timestamp')})


@pytest.mark.service
def test_redis_online_store(small_world):
    "Materialisation, retrieval and parity against a real redis-server (.ci/run starts one and sets MLSYS_REDIS_URL)."
    url = os.environ.get('MLSYS_REDIS_URL')
    if not url: pytest.skip('MLSYS_REDIS_URL is not set: start redis-server and set it (CI does) to run this test')
    import redis
    redis.Redis.from_url(url).ping()                        # unreachable: fail loudly, do not skip
    d, w, man, tables = small_world
    build = build_repo(d/'features_redis', tables, online=url)
    store = open_store(build)
    assert type(store._get_provider().online_store).__name__ == 'RedisOnlineStore'
    rep = parity_check(store, read_table(d/'lake', 'transactions'), w.users, man, tables['user_velocity'], n=1000, days=3)
    parity_gate(rep)
    assert rep.pairs == 1000 and rep.max_abs_diff <= 1e-6
    materialize(store, pd.Timestamp(man['as_of']))
    out = online_features(store, read_table(d/'lake', 'transactions').tail(5))
    assert not out.missing.any()
    store.teardown()
