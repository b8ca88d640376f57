"The monitor and retrain jobs on a production workspace: the daily report from the prediction log, the hybrid policy's decision, and a retrain that leaves production as it was unless it passes every gate."
import json, re
import pytest
from conftest import mlsys, run_record
from mlsys.registry import Registry
from mlsys.retrain import production_state


def test_monitor_then_retrain_jobs(production_ws, tmp_path):
    ws = production_ws(tmp_path/'workspace')
    days = sorted(p.stem for p in (ws/'monitoring'/'predictions').glob('*.jsonl'))
    assert days, 'batch_predict logs its predictions for the monitor'
    p = mlsys('job', 'monitor', '--workspace', ws, '-p', 'day', '1999-01-01')   # bad input: a day the log does not hold
    assert p.returncode == 1 and "day='1999-01-01'" in p.stderr and days[0] in p.stderr
    p = mlsys('job', 'monitor', '--workspace', ws)
    assert p.returncode == 0, p.stderr[-2000:]
    run_dir, rec = run_record(p)
    m = rec['stages'][0]['metrics']
    assert m['day'] == days[-1] and m['rows'] > 100
    report = (run_dir/'monitor'/f'report-{days[-1]}.md').read_text()
    assert '## Data drift' in report and 'amount_to_avg_30d' in report and (run_dir/'monitor'/f'report-{days[-1]}.png').stat().st_size > 1000
    sig = json.loads((ws/'monitoring'/'signals'/f'{days[-1]}.json').read_text())
    from mlsys.config import Workspace
    from mlsys.monitor import production_reference   # the production model's recall on its own test window, as the job must report it
    assert sig['model_version'] == 1 and sig['reference_recall'] == pytest.approx(production_reference(Workspace(ws))[1], abs=1e-12)
    # one verdict in three places: the stage's metrics, the signals the retrain job reads, the report's headline; each alarm with its cause
    assert m['alarms'] == sig['alarms'] and f"**Alarms:** {', '.join(a.replace('_', ' ') for a in sig['alarms']) or 'none'}" in report
    assert ('data_drift' in sig['alarms']) == sig['data_drift'] == bool(re.search(r'\|\s*True\s*\|', report.split('## Data drift')[1].split('\n## ')[0]))

    before = production_state(Registry(ws/'models'), 'fraud')
    p = mlsys('job', 'retrain', '--workspace', ws, '-p', 'force', 'true', '-p', 'epochs', '1', '-p', 'val_days', '2', '-p', 'test_days', '2',
              '-p', 'min_auprc', '0.99')
    assert p.returncode == 0, p.stderr[-2000:]
    m = run_record(p)[1]['stages'][0]['metrics']
    # a quality bar no model here reaches, judged on a window with enough labelled frauds: the gate refuses the candidate,
    # and production stays as it was, files included
    assert m['retrain'] and not m['promoted'] and m['reason'].startswith('gates failed: min quality') and m['production_after'] == m['production_before'] == 1
    assert 'insufficient evidence' not in m['reason'], m['reason']
    reg = Registry(ws/'models')
    assert production_state(reg, 'fraud') == before
    versions = reg.list('fraud').set_index('version')
    assert versions.loc[m['version'], 'stage'] == 'archived'
