"`mlsys run -p simulate_days N`: the lake holds back N days, the pipeline registers a model on the rest, and the loop stage replays them as production."
import json
import pytest
from conftest import SMALL, SMALL_GATES, SMALL_TRAIN, mlsys, run_record
from mlsys.registry import Registry
from mlsys.world import partitions, read_manifest


@pytest.mark.slow
def test_run_with_simulated_days_replays_them(tmp_path):
    ws = tmp_path/'workspace'
    p = mlsys('run', '--workspace', ws, *SMALL, *SMALL_TRAIN, *SMALL_GATES, '-p', 'simulate_days', '8', '-p', 'policies', 'none,hybrid')
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir, rec = run_record(p)
    assert [s['name'] for s in rec['stages']][-2:] == ['batch_predict', 'loop']
    man = read_manifest(ws/'lake')
    assert (man['n_days'], man['future_days'], man['config']['n_days'], len(partitions(ws/'lake', 'transactions'))) == (10, 8, 18, 10)
    loop = json.loads((run_dir/'loop.json').read_text())
    assert loop['days'] == 8 and set(loop['policies']) == {'none', 'hybrid'} and (run_dir/'loop.png').stat().st_size > 1000
    for k in ('covariate_shift_detection_delay_days', 'concept_drift_detection_delay_days', 'false_alarms_clean_days'):
        assert k in loop and k in rec['stages'][-1]['metrics']
    tl = loop['policies']['none']['timeline']
    assert [d['day'] for d in tl] == list(range(8)) and all(d['model_version'] == 1 for d in tl)
    # the loop works on copies: the workspace's registry still has its one production version
    assert Registry(ws/'models').list('fraud').version.tolist() == [1]
    assert mlsys('run', '--workspace', ws, '--from', 'loop', '-p', 'simulate_days', '9').returncode == 1   # more days than were held back
