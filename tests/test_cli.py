"`mlsys run`, `mlsys job` and their contracts, end to end through the installed command."
import json, subprocess
from pathlib import Path
import pytest
from conftest import BIN, ROOT, SHARED_RUN_STAGES, SMALL, SMALL_TRAIN, mlsys, run_record

STAGE_KEYS = {'name', 'status', 'started', 'ended', 'seconds', 'notebook', 'artifacts', 'metrics'}


def test_run_contract(production_ws, ws):
    p = production_ws.original_proc   # the shared full run on the small world (conftest); registry checks: tests/test_registry.py
    ws = production_ws(ws)
    run_dir, rec = run_record(p)
    run_dir = ws/'runs'/run_dir.name   # the private copy of the run's folder
    assert set(rec) >= {'run_id', 'status', 'failed_stage', 'reason', 'stages', 'lineage'}
    assert (rec['status'], rec['failed_stage'], rec['reason']) == ('succeeded', None, None)
    assert [s['name'] for s in rec['stages']] == SHARED_RUN_STAGES   # no tune
    for s in rec['stages']:
        assert STAGE_KEYS <= set(s) and s['status'] == 'succeeded' and (run_dir/s['notebook']).exists()
    assert (ws/'runs'/'latest').resolve().name == run_dir.name
    assert set(rec['lineage']['data_hashes']) >= {'transactions', 'labels', 'users'}
    assert {'n_days': 10, 'val_days': 2, 'test_days': 2, 'epochs': 2, 'baseline': False}.items() <= rec['lineage']['config']['params'].items()
    assert (run_dir/'validate'/'validation.md').read_text().startswith('# Validation report')
    assert rec['stages'][0]['metrics']['rows']['transactions'] > 10_000
    train = rec['stages'][3]
    assert train['metrics']['epochs'] == 2 and train['metrics']['wandb_run'].startswith('mlsys/')
    evaluate = rec['stages'][4]['metrics']   # the same model on the same window: the train and evaluate stages agree, and the quality gate judged it
    assert evaluate['window'] == 'test' and evaluate['test_auprc'] >= 0.5 and evaluate['test_auprc'] == pytest.approx(train['metrics']['test_auprc'], abs=1e-6)
    model_dir = ws/Path(train['artifacts']['model']).relative_to(Path(rec['stages'][0]['artifacts']['lake']).parent)
    assert sorted(p.name for p in model_dir.iterdir()) == ['model.json', 'preprocessor.json', 'weights.safetensors']
    assert list((ws/'tracking'/'checkpoints').iterdir()) == []   # a finished attempt leaves nothing to resume
    # -p tune true adds the optional tune stage; the train job then uses the study's best parameters
    p = mlsys('run', '--workspace', ws, '--from', 'tune', '--to', 'train', '-p', 'tune', 'true', '-p', 'n_trials', '2', '-p', 'max_epochs', '1',
              '-p', 'wandb', 'false', *SMALL_TRAIN)
    assert p.returncode == 0, p.stderr[-2000:]
    rec = run_record(p)[1]
    assert [s['name'] for s in rec['stages']] == ['tune', 'train'] and rec['lineage']['config']['params']['tune'] is True
    best = json.loads((ws/'tracking'/'best_params.json').read_text())
    used = json.loads(Path(rec['stages'][1]['artifacts']['metrics']).read_text())['params']
    assert used == {**best['model'], 'batch_size': best['batch_size']}


def test_same_seed_same_data(ws, tmp_path):
    hashes = []
    for w in (ws, tmp_path/'other'):
        p = mlsys('run', '--workspace', w, '--to', 'ingest', *SMALL, '-p', 'seed', '5')
        assert p.returncode == 0, p.stderr
        hashes.append(run_record(p)[1]['lineage']['data_hashes'])
    assert hashes[0] == hashes[1]
    p = mlsys('run', '--workspace', ws, '--to', 'ingest', *SMALL, '-p', 'seed', '6')
    assert run_record(p)[1]['lineage']['data_hashes']['transactions'] != hashes[0]['transactions']


@pytest.mark.parametrize('fault,check', [('null_spike', 'null_rate'), ('schema_change', 'column_in_schema'),
    ('out_of_range', 'in_range'), ('duplicate_keys', 'unique_key'), ('stale_partition', 'freshness')])
def test_fault_stops_at_validate(ws, fault, check):
    p = mlsys('run', '--workspace', ws, *SMALL, '-p', 'fault', fault)
    assert p.returncode == 1
    run_dir, rec = run_record(p)
    assert (rec['status'], rec['failed_stage']) == ('failed', 'validate')
    assert rec['reason'].startswith('ValidationFailed') and check in rec['reason'] and '\n' not in rec['reason']
    assert (run_dir/'notebooks'/'validate.ipynb').exists()
    assert 'stage validate failed' in p.stderr


def test_timezone_bug_passes_validation_fails_parity(ws):
    "Invisible to distribution checks: the features stage's parity test is what catches it."
    p = mlsys('run', '--workspace', ws, *SMALL, '-p', 'fault', 'timezone_bug')
    run_dir, rec = run_record(p)
    assert p.returncode == 1 and rec['failed_stage'] == 'features', p.stderr
    assert [s['status'] for s in rec['stages']] == ['succeeded', 'succeeded', 'failed']
    assert rec['reason'].startswith('ParityError') and 'local_hour' in rec['reason']
    assert not (ws/'features'/'current').exists()   # the failed build never went into service


def test_slice_and_job(ws):
    assert mlsys('run', '--workspace', ws, '--to', 'ingest', *SMALL).returncode == 0
    p = mlsys('run', '--workspace', ws, '--from', 'validate', '--to', 'validate')
    assert p.returncode == 0, p.stderr
    assert [s['name'] for s in run_record(p)[1]['stages']] == ['validate']
    p = mlsys('job', 'validate', '--workspace', ws, '-p', 'window_days', '2')
    assert p.returncode == 0 and [s['name'] for s in run_record(p)[1]['stages']] == ['validate']


def test_bad_input(ws, tmp_path):
    # unknown fault: the ingest stage fails with the name and the choices, its notebook kept
    p = mlsys('run', '--workspace', ws, *SMALL, '-p', 'fault', 'gremlins')
    run_dir, rec = run_record(p)
    assert p.returncode == 1 and rec['failed_stage'] == 'ingest' and "fault='gremlins'" in rec['reason'] and 'null_spike' in rec['reason']
    assert (run_dir/'notebooks'/'ingest.ipynb').exists() and not (ws/'lake'/'_manifest.json').exists()
    # missing lake: validate names the path
    p = mlsys('run', '--workspace', tmp_path/'empty', '--from', 'validate')
    assert p.returncode == 1 and 'no lake at' in run_record(p)[1]['reason']
    # usage errors: exit 2, nothing run
    runs = set((ws/'runs').iterdir())
    p = mlsys('run', '--workspace', ws, '-p', 'colour', 'red')
    assert p.returncode == 2 and 'unknown parameter(s) colour' in p.stderr and set((ws/'runs').iterdir()) == runs
    p = mlsys('run', '--workspace', ws, '-p', 'run_dir', '/tmp/x')
    assert p.returncode == 2 and 'run_dir is set by the runner' in p.stderr
    assert mlsys('run', '--to', 'nowhere').returncode == 2
    assert mlsys('job', 'nowhere', '--workspace', ws).returncode == 2
    # malformed settings file: exit 1 with the file named
    bad = tmp_path/'mlsys.yaml'; bad.write_text('seed: [1,\n')
    p = mlsys('run', '--config', bad)
    assert p.returncode == 1 and 'not valid YAML' in p.stderr and str(bad) in p.stderr


def test_papermill_without_mlsys(ws, tmp_path):
    for job, params in [('ingest', ['-p', 'n_days', '8']), ('validate', [])]:
        p = subprocess.run([str(BIN/'papermill'), str(ROOT/'nbs'/'jobs'/f'{job}.ipynb'), str(tmp_path/f'{job}.ipynb'),
                            '-p', 'workspace', str(ws), *params, '--log-level', 'WARNING'], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-2000:]
    reports = [r for r in (ws/'runs').glob('*/validate/validation.json') if r.parts[-3] != 'latest']
    assert len(reports) == 1 and json.loads(reports[0].read_text())['passed']


def test_info_and_bench(ws):
    p = mlsys('info', '--workspace', ws)
    assert p.returncode == 0 and json.loads(p.stdout)['devices']['cpus'] >= 1
    p = mlsys('bench', 'ingest', '--quick', '--workspace', ws)
    assert p.returncode == 0, p.stderr
    rec = json.loads((ws/'bench'/'ingest.json').read_text())
    assert {'name', 'machine', 'results', 'ratios'} <= set(rec) and 'partition_pruned_read_speedup' in rec['ratios']   # a timing: reported, not asserted
    reads = {r['label']: r for r in rec['results']}
    assert reads['read all transactions']['days_read'] == 14 and reads['read newest 3 days']['days_read'] == 3   # the pruned read opens 3 partitions


def test_bench_features_quick(ws):
    p = mlsys('bench', 'features', '--quick', '--workspace', ws)
    assert p.returncode == 0, p.stderr
    rec = json.loads((ws/'bench'/'features.json').read_text())
    assert {'pit_speedup_vs_feast_file_10k', 'online_p99_ms_1_entity'} <= set(rec['ratios'])
    offline = [r for r in rec['results'] if 'equal_to_file_store' in r]
    assert len(offline) == 8 and all(r['equal_to_file_store'] for r in offline)
    assert all(r['rows_returned'] == r['entity_rows'] for r in offline if r['label'] != 'feast file store')


def test_bench_train_quick(ws):
    p = mlsys('bench', 'train', '--quick', '--workspace', ws)
    assert p.returncode == 0, p.stderr[-2000:]
    rec = json.loads((ws/'bench'/'train.json').read_text())
    assert rec['device'] == 'cpu' and rec['ratios']['lightning_over_raw_epoch_time'] > 0
    assert {r['label'] for r in rec['results']} >= {'lightning (cpu)', 'plain pytorch (cpu)', 'gradient boosting fit (cpu)'}
    p = mlsys('bench', 'ingest', '--device', 'cuda', '--workspace', ws)
    assert p.returncode == 2 and "'ingest' runs on the CPU only" in p.stderr


def test_serve_llm_engine_flags_checked(tmp_path):
    "`mlsys serve`'s language-model flags: a value out of range exits 2 naming the flag, before anything starts."
    from conftest import mlsys_main
    for flags, msg in [(('--max-seqs', '0'), '--max-seqs 0: must be an integer >= 1'),
                       (('--prefill-chunk', '-8'), '--prefill-chunk -8: must be an integer >= 1'),
                       (('--kv-blocks', '0'), '--kv-blocks 0: must be an integer >= 1')]:
        p = mlsys_main('serve', '--workspace', tmp_path/'ws', *flags)
        assert p.returncode == 2 and msg in p.stderr, p.stderr
    # a budget short of the production model's context: tests/test_llm_serve.py::test_engine_flags_shown_and_checked
