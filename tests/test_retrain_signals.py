"`retrain_on_signals`, the retrain job's library call, on a production workspace: the monitor's verdict is read back, put to the hybrid policy, and a missing verdict is an error that names what is missing."
import pytest
from mlsys.config import Workspace, write_json
from mlsys.registry import Registry
from mlsys.retrain import production_state, read_signals, retrain_on_signals


def test_retrain_on_signals(production_ws, tmp_path):
    ws = Workspace(production_ws(tmp_path/'workspace'))
    with pytest.raises(FileNotFoundError, match='no monitor signals in .*: run the monitor job first'):
        retrain_on_signals(ws)
    before = production_state(Registry(ws.models), 'fraud')
    sig = {'day': '2000-01-02', 'data_drift': True, 'prediction_drift': False, 'drift_score': 0.4, 'performance': 0.9,
           'n_labelled_pos': 50, 'reference_recall': 0.8, 'model_version': before['version']}
    write_json(ws.monitoring/'signals'/'2000-01-02.json', sig)
    assert read_signals(ws) == sig and read_signals(ws, '2000-01-02') == sig
    with pytest.raises(FileNotFoundError, match=r"day='2000-01-03': no signals at .*the monitor job wrote \['2000-01-02'\]"):
        retrain_on_signals(ws, day='2000-01-03')
    # a day before the model's data ends counts as day 0 after training: the drift trigger fires inside the cooldown
    job = retrain_on_signals(ws, schedule_days=7, cooldown_days=3)
    assert set(job) == {'day', 'retrain', 'reasons', 'suppressed'}   # the retrain job's run-record metrics, no retrain
    assert (job['day'], job['retrain'], job['reasons']) == ('2000-01-02', False, [])
    assert len(job['suppressed']) == 1 and 'cooldown: 0 of 3 days' in job['suppressed'][0]
    assert production_state(Registry(ws.models), 'fraud') == before
