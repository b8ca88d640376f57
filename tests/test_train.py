"Training with tracking and no network: the W&B logger must stay offline and local."
import os, shutil, subprocess, textwrap
import pytest
from conftest import BIN

SCRIPT = textwrap.dedent('''
    import sys, numpy as np, pandas as pd
    from pathlib import Path
    from mlsys.train import FraudDataModule, TabularClassifier, make_trainer
    rng = np.random.default_rng(0); n = 3000
    df = pd.DataFrame({'event_timestamp': pd.Timestamp('2026-01-01', tz='UTC') + pd.to_timedelta(np.sort(rng.integers(0, 20 * 86400, n)), 's'),
                       'x': rng.normal(size=n), 'country': rng.choice(['US', 'GB'], n), 'local_hour': rng.integers(0, 24, n)})
    df['is_fraud'] = (df.x + rng.normal(size=n) > 2.2)
    dm = FraudDataModule(df, ['x'], batch_size=256)
    out = Path(sys.argv[1])
    tr = make_trainer(max_epochs=2, ckpt_dir=out/'ckpt', logger='wandb', tracking_dir=out/'tracking', clip=None)
    tr.fit(TabularClassifier(1, dm.pre.cardinalities, pos_weight=dm.pos_weight), dm)
    from mlsys.train import log_checkpoint
    assert log_checkpoint(tr) is not None; tr.logger.experiment.finish()
''')


def test_wandb_offline_without_network(tmp_path):
    if not shutil.which('unshare') or subprocess.run(['unshare', '-n', 'true']).returncode != 0:
        pytest.skip('unshare -n (a process without network) is not permitted here')
    env = {**os.environ, 'HOME': str(tmp_path), 'WANDB_API_KEY': '', 'WANDB_MODE': ''}
    p = subprocess.run([shutil.which('unshare'), '-n', str(BIN/'python'), '-c', SCRIPT, str(tmp_path)], capture_output=True, text=True,
                       timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = list((tmp_path/'tracking'/'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and any(runs[0].rglob('*.wandb'))
    assert (tmp_path/'ckpt'/'last.ckpt').exists()


def test_training_imports_leave_transformers_out():
    "torchmetrics imports transformers for BERTScore whenever it is installed (~1 s a process); mlsys.train keeps it out."
    import subprocess, sys
    code = 'import sys, mlsys.train, mlsys.tune; assert "transformers" not in sys.modules, "transformers imported"'
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
