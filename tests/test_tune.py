"Tuning across processes: two workers share one SQLite study, and a study whose worker was killed resumes to the requested size."
import os, signal, sqlite3, subprocess, textwrap, time
from contextlib import closing
import numpy as np
import pandas as pd
import pytest
from conftest import BIN


def synthetic(n=3000, seed=0):
    "A small labelled frame over 20 days with one informative feature, shaped like a training set."
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({'event_timestamp': pd.Timestamp('2026-01-01', tz='UTC') + pd.to_timedelta(np.sort(rng.integers(0, 20 * 86400, n)), 's'),
                       'x': rng.normal(size=n), 'country': rng.choice(['US', 'GB'], n), 'local_hour': rng.integers(0, 24, n)})
    df['is_fraud'] = df.x + rng.normal(size=n) > 2.2
    return df


@pytest.fixture
def frame(tmp_path):
    path = tmp_path/'data.parquet'; synthetic().to_parquet(path); return path


def test_two_workers_share_one_study(tmp_path, frame):
    import optuna
    from mlsys.tune import summary, tune
    url = f'sqlite:///{tmp_path}/optuna.db'
    st = tune(pd.read_parquet(frame), n_trials=6, study='two', storage=url, workers=2, max_epochs=2, numeric=['x'], show_progress=False)
    st = optuna.load_study(study_name='two', storage=url)   # read back from the file, not from the returned object
    s = summary(st)
    assert s['n_trials'] == 6 and s['failed'] == 0 and len(st.trials) == 6
    pids = [t.user_attrs['pid'] for t in st.trials]
    assert len(set(pids)) == 2 and os.getpid() not in pids and sorted(pids.count(p) for p in set(pids)) == [3, 3]
    assert len({tuple(sorted(t.params.items())) for t in st.trials}) == 6   # differently seeded samplers: no duplicate proposals


WORKER = textwrap.dedent('''
    import sys, pandas as pd
    from mlsys.tune import tune
    tune(pd.read_parquet(sys.argv[1]), n_trials=int(sys.argv[3]), study='resume', storage=sys.argv[2], max_epochs=3,
         numeric=['x'], heartbeat=1, grace=2, show_progress=False)
''')


def test_killed_study_resumes(tmp_path, frame):
    import optuna
    from optuna.trial import TrialState
    from mlsys.tune import open_study, summary, tune
    url, n = f'sqlite:///{tmp_path}/optuna.db', 8
    open_study('resume', url, max_epochs=3, heartbeat=1, grace=2)   # the tables exist before the worker starts
    p = subprocess.Popen([str(BIN/'python'), '-c', WORKER, str(frame), url, str(n)], stderr=subprocess.PIPE, text=True)
    done = lambda: summary(optuna.load_study(study_name='resume', storage=url))['n_trials']
    def beating(st):   # a running trial whose heartbeat is recorded: only such a trial can be found stale and failed after the kill
        with closing(sqlite3.connect(tmp_path/'optuna.db')) as con: beats = {r[0] for r in con.execute('SELECT trial_id FROM trial_heartbeats')}
        return any(t.state == TrialState.RUNNING and t._trial_id in beats for t in st.get_trials(deepcopy=False))
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:   # kill it once two trials are finished and a third is running
        if done() >= 2:
            p.send_signal(signal.SIGSTOP)   # freeze it, so the trial seen running is still running when the kill lands
            try: running = beating(optuna.load_study(study_name='resume', storage=url))
            except Exception: running = False   # frozen inside a write: the file is locked; let it go on and look again
            if running: break
            p.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    assert p.poll() is None, f'the worker ended before it could be killed: {p.stderr.read()[-2000:]}'
    p.send_signal(signal.SIGKILL); p.wait()
    st = optuna.load_study(study_name='resume', storage=url)
    killed = [t.number for t in st.trials if t.state == TrialState.RUNNING]
    finished = done()
    assert killed and 2 <= finished < n
    time.sleep(3)   # past the grace period: the killed worker's heartbeat is stale
    st = tune(pd.read_parquet(frame), n_trials=n, study='resume', storage=url, max_epochs=3, numeric=['x'], heartbeat=1, grace=2, show_progress=False)
    st = optuna.load_study(study_name='resume', storage=url)
    s = summary(st)
    assert s['n_trials'] == n and s['failed'] == len(killed)
    assert [st.trials[i].state for i in killed] == [TrialState.FAIL] * len(killed)
    assert not [t for t in st.trials if t.state == TrialState.RUNNING]
    assert len({t.user_attrs['pid'] for t in st.trials if t.state != TrialState.FAIL}) == 2   # the killed worker's trials and the resumed ones
