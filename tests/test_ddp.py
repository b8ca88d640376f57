"The distributed path on CPU: DDP with two gloo processes trains to the same metrics as one process on the same data."
import json, subprocess, textwrap
import pytest
from conftest import BIN

SCRIPT = textwrap.dedent('''
    import json, sys, warnings, numpy as np, pandas as pd, torch
    from pathlib import Path
    from mlsys.train import FraudDataModule, TabularClassifier, make_trainer
    warnings.filterwarnings('ignore')
    out, devices = Path(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(0); n = 20_000
    df = pd.DataFrame({'event_timestamp': pd.Timestamp('2026-01-01', tz='UTC') + pd.to_timedelta(np.sort(rng.integers(0, 20 * 86400, n)), 's'),
                       'x': rng.normal(size=n), 'z': rng.normal(size=n), 'country': rng.choice(['US', 'GB', 'NG'], n), 'local_hour': rng.integers(0, 24, n)})
    df['is_fraud'] = (df.x - df.z + 0.5 * rng.normal(size=n) > 2.5)
    dm = FraudDataModule(df, ['x', 'z'], batch_size=512 // devices)    # the same global batch: 512 rows per optimiser step
    tr = make_trainer(max_epochs=4, patience=0, accelerator='cpu', devices=devices, clip=None)   # the model clips
    model = TabularClassifier(2, dm.pre.cardinalities, pos_weight=dm.pos_weight)
    tr.fit(model, dm)
    val = tr.validate(model, dm, verbose=False)[0]
    if tr.global_rank == 0:
        (out/f'devices{devices}.json').write_text(json.dumps({'strategy': type(tr.strategy).__name__, 'world_size': tr.world_size,
            'backend': getattr(tr.strategy, '_process_group_backend', None), 'steps': tr.global_step, **{k: float(v) for k, v in val.items()}}))
''')


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path):
    script = tmp_path/'ddp_train.py'; script.write_text(SCRIPT)   # DDP relaunches the script for rank 1, so it must be a file
    for devices in (1, 2):
        p = subprocess.run([str(BIN/'python'), str(script), str(tmp_path), str(devices)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
    one, two = (json.loads((tmp_path/f'devices{d}.json').read_text()) for d in (1, 2))
    assert two['strategy'] == 'DDPStrategy' and two['world_size'] == 2 and two['backend'] == 'gloo'
    assert one['steps'] == two['steps']                      # same number of optimiser steps: the global batch is the same
    assert abs(one['val_auprc'] - two['val_auprc']) < 0.02 and abs(one['val_auroc'] - two['val_auroc']) < 0.01, (one, two)
