"`mlsys run -p simulate_days N`: the lake holds back N days, the pipeline registers a model on the rest, and the loop stage replays them as production."
import json
from conftest import run_record, mlsys
from mlsys.registry import Registry
from mlsys.world import partitions, read_manifest


def test_run_with_simulated_days_replays_them(production_ws, tmp_path):
    "The shared run (conftest's `_full_run`: the small world, `-p simulate_days 8 -p policies none,hybrid`)."
    ws, p = production_ws(tmp_path/'workspace'), production_ws.original_proc
    run_dir, rec = run_record(p)
    assert [s['name'] for s in rec['stages']][-2:] == ['batch_predict', 'loop']
    man = read_manifest(ws/'lake')
    assert (man['n_days'], man['future_days'], man['config']['n_days'], len(partitions(ws/'lake', 'transactions'))) == (10, 8, 18, 10)
    loop = json.loads((run_dir/'loop.json').read_text())
    assert loop['days'] == 8 and set(loop['policies']) == {'none', 'hybrid'} and (run_dir/'loop.png').stat().st_size > 1000
    stage = rec['stages'][-1]['metrics']
    # the world: clean production days 0-3, the covariate shift from day 4, the new fraud pattern from day 5, labels after a median of 2 days (FAST_LABELS)
    assert (loop['covariate_shift_day'], loop['concept_drift_day']) == (4, 5)
    # ten landed days: the 7- and 30-day windows of the counters are still filling up, so the monitor alarms on every clean day (warm-up,
    # not the world: 11a_loop, with 30 landed days, asserts no data-drift or concept alarm on a clean day). What must hold here: no
    # clean-day alarm names a feature the covariate shift moves (amounts, countries), and the shift's features are flagged on its first
    # or second evening, under either policy.
    assert stage['false_alarms_clean_days'] == loop['false_alarms_clean_days'] == loop['covariate_shift_day']
    for p, v in loop['policies'].items():
        flagged = [r['day'] for r in v['timeline'] if {'amount', 'country'} & set(r['drifted'])]
        assert flagged and flagged[0] - loop['covariate_shift_day'] in (0, 1), (p, flagged)
    assert stage['covariate_shift_detection_delay_days'] == loop['covariate_shift_detection_delay_days'] in (0, 1)
    # the concept alarm waits for labels, which take at least a day: of the three drifted days (5-7), never the onset's own evening
    assert loop['concept_drift_detection_delay_days'] in (None, 1, 2)
    tl = loop['policies']['none']['timeline']
    assert [d['day'] for d in tl] == list(range(8)) and all(d['model_version'] == 1 for d in tl)
    # the loop works on copies: the workspace's registry still has its one production version
    assert Registry(ws/'models').list('fraud').version.tolist() == [1]
    assert mlsys('run', '--workspace', ws, '--from', 'loop', '-p', 'simulate_days', '9').returncode == 1   # more days than were held back
