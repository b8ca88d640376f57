"Kill a training process with SIGKILL in the middle of an epoch; the rerun resumes from the last checkpoint and ends with the same model."
import json, os, signal, subprocess, textwrap, time
from conftest import BIN

SCRIPT = textwrap.dedent('''
    import json, sys, numpy as np, pandas as pd, torch, lightning as L
    from pathlib import Path
    from mlsys.train import FraudDataModule, TabularClassifier, fit, make_trainer
    out, epochs = Path(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(0); n = 16_000   # 250 steps an epoch: room to kill one in its middle
    df = pd.DataFrame({'event_timestamp': pd.Timestamp('2026-01-01', tz='UTC') + pd.to_timedelta(np.sort(rng.integers(0, 20 * 86400, n)), 's'),
                       'x': rng.normal(size=n), 'z': rng.normal(size=n), 'country': rng.choice(['US', 'GB', 'NG'], n), 'local_hour': rng.integers(0, 24, n)})
    df['is_fraud'] = (df.x - df.z + rng.normal(size=n) > 3)
    dm = FraudDataModule(df, ['x', 'z'], batch_size=64)
    class Beat(L.Callback):   # tells the test where training is: epoch and step, every 25 steps
        def on_train_batch_end(self, trainer, module, outputs, batch, i):
            if i % 25 == 0: (out/'beat').write_text(f'{trainer.current_epoch} {i}')
    tr = make_trainer(max_epochs=epochs, patience=0, ckpt_dir=out/'ckpt', callbacks=[Beat()], clip=None)
    model = TabularClassifier(2, dm.pre.cardinalities, pos_weight=dm.pos_weight)
    resumed = fit(tr, model, dm)
    val = tr.validate(model, dm, verbose=False)[0]
    (out/'result.json').write_text(json.dumps({'resumed_from': str(resumed) if resumed else None, 'val_auprc': val['val_auprc'],
                                               'weights': float(sum(p.double().abs().sum() for p in model.parameters()))}))
''')


def train(out, epochs=3):
    out.mkdir(exist_ok=True)
    return subprocess.Popen([str(BIN/'python'), '-c', SCRIPT, str(out), str(epochs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_epoch_then_resume(tmp_path):
    straight = train(tmp_path/'straight'); assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]
    killed_dir = tmp_path/'killed'; p = train(killed_dir)
    beat, deadline = killed_dir/'beat', time.time() + 300
    def where(): return tuple(map(int, beat.read_text().split() or (0, 0))) if beat.exists() else (0, 0)
    while time.time() < deadline and where() < (1, 100): time.sleep(0.01)   # in the middle of the second epoch, or later
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL and not (killed_dir/'result.json').exists()
    assert (killed_dir/'ckpt'/'last.ckpt').exists()
    again = train(killed_dir); assert again.wait(timeout=600) == 0, again.stderr.read()[-2000:]
    a, b = (json.loads((d/'result.json').read_text()) for d in (tmp_path/'straight', killed_dir))
    assert b['resumed_from'].endswith('last.ckpt') and a['resumed_from'] is None
    assert a['val_auprc'] == b['val_auprc'] and a['weights'] == b['weights']
