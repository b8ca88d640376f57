"From raw events to a gated production model: register, batch predict, rebuild from lineage, and a worse model stopped by the regression gate."
import json, shlex
import pandas as pd
import pytest
from conftest import SHARED_RUN_STAGES, SMALL_TRAIN, mlsys, mlsys_main, run_record
from mlsys.evaluate import MIN_POSITIVES
from mlsys.registry import Registry


def test_run_to_production_rebuild_and_regression_gate(production_ws, tmp_path):
    ws = production_ws(tmp_path/'workspace')   # a private copy of the shared full run
    p = production_ws.original_proc
    run_dir, rec = run_record(p)
    assert [s['name'] for s in rec['stages']] == SHARED_RUN_STAGES
    reg = Registry(ws/'models'); prod = reg.get('fraud', 'production')
    assert prod['version'] == 1 and prod['gates_passed'] == 1 and reg.verify('fraud', 1) == []
    assert [*reg.history('fraud').to_stage] == ['none', 'staging', 'production']
    # the gates judged: a test window with enough labelled frauds, and a slice with the evaluate job's default support (10 frauds, 200 rows)
    evaluation = json.loads((run_dir/'evaluate'/'evaluation.json').read_text())
    assert evaluation['window']['name'] == 'test' and evaluation['window']['positives'] >= MIN_POSITIVES, evaluation['window']
    gates = {g['name']: g for g in evaluation['gates']}
    assert not any(g['detail'].startswith('insufficient evidence') for g in gates.values()) and gates['slice gap']['value'] is not None
    files = {p.name for p in prod['path'].iterdir()}
    assert files >= {'weights.safetensors', 'preprocessor.json', 'model.json', 'schema.json', 'metrics.json', 'gates.json', 'lineage.json', 'MODEL_CARD.md', 'checksums.json'}
    lineage = reg.lineage('fraud', 1)
    assert lineage['run_id'] == rec['run_id'] and lineage['wandb_run'].startswith('mlsys/') and 'user_velocity' in lineage['feature_views']
    assert {'lake_transactions', 'training_set'} <= set(lineage['data_hashes'])

    batch = rec['stages'][SHARED_RUN_STAGES.index('batch_predict')]
    preds = pd.read_parquet(batch['artifacts']['predictions'])
    assert len(preds) == batch['metrics']['rows'] > 0 and (preds.model_version == 1).all()
    assert set(preds.decision) <= {'approve', 'review', 'block'} and preds.score.between(0, 1).all()

    # rebuilt from the registry's lineage in a fresh workspace: the same data and bit-identical weights
    show = json.loads(mlsys_main('registry', 'show', 'fraud:1', '--workspace', ws).stdout)
    cmd = shlex.split(show['rebuild']['command'])
    assert cmd[:3] == ['mlsys', 'run', '--to']
    p = mlsys(*cmd[1:], '--workspace', tmp_path/'rebuilt')
    assert p.returncode == 0, p.stderr[-3000:]
    rebuilt = run_record(p)[1]; train = rebuilt['stages'][-1]
    assert train['name'] == 'train' and rebuilt['lineage']['data_hashes']['training_set'] == show['rebuild']['data_hashes']['training_set']
    from mlsys.registry import sha256
    assert sha256(f"{train['artifacts']['model']}/weights.safetensors") == show['files']['weights.safetensors']

    # a deliberately worse model (untrained: -p epochs 0, the default seed) is stopped by the regression gate; production is unchanged
    p = mlsys('run', '--workspace', ws, '--from', 'train', *SMALL_TRAIN, '-p', 'epochs', '0')
    run_dir, rec = run_record(p)
    assert p.returncode == 1 and rec['failed_stage'] == 'evaluate' and 'no regression' in rec['reason'], p.stderr[-2000:]
    assert 'insufficient evidence' not in rec['reason']   # refused on the numbers, not for want of them
    assert reg.get('fraud', 'production')['version'] == 1 and reg.list('fraud').version.tolist() == [1]
    assert (run_dir/'evaluate'/'evaluation.json').exists()   # the failed evaluation is kept, with every gate
    untrained_fail_for_every_seed(ws, reg)

    # a window too thin for the gates (here: a minimum no window of this world meets) is widened, then refused; production is unchanged
    p = mlsys('job', 'evaluate', '--workspace', ws, '-p', 'model_dir', prod['path'], '-p', 'min_positives', '100000')
    run_dir, rec = run_record(p)
    window = json.loads((run_dir/'evaluate'/'evaluation.json').read_text())['window']
    assert p.returncode == 1 and 'insufficient evidence' in rec['reason'] and window['name'] == 'validation + test', p.stderr[-2000:]
    assert window['positives'] > window['test_positives'] and reg.get('fraud', 'production')['version'] == 1

    # the command line's errors (in this process: `mlsys.cli.main` is what the command runs)
    assert mlsys_main('registry', 'show', 'fraud:7', '--workspace', ws).returncode == 2
    assert mlsys_main('registry', 'promote', 'nope:1', '--workspace', ws).returncode == 2
    p = mlsys_main('registry', 'rollback', 'fraud', '--workspace', ws)
    assert p.returncode == 1 and 'no earlier production version' in p.stderr
    w = prod['path']/'weights.safetensors'; w.write_bytes(w.read_bytes()[:-4] + b'oops')
    p = mlsys_main('registry', 'verify', 'fraud:1', '--workspace', ws)
    assert p.returncode == 1 and 'weights.safetensors: checksum mismatch' in p.stderr


def untrained_fail_for_every_seed(ws, reg, seeds=range(5)):
    "An untrained network of the production model's architecture, drawn with each of `seeds`, fails the quality and regression gates on the evaluation window."
    import torch
    from mlsys.evaluate import classification_metrics, gate_min_quality, gate_no_regression, gate_no_regression_paired, score
    from mlsys.train import time_split, training_set
    prod, pre, row = reg.load('fraud', 'production')
    config = reg.spec('fraud', row['version'])['config']
    test = time_split(training_set(ws), config['val_days'], config['test_days'])[2]
    p_prod = score(prod, pre, test); auprc_prod = classification_metrics(test.is_fraud, p_prod)['auprc']
    for seed in seeds:
        torch.manual_seed(seed); p = score(type(prod)(**prod.hparams), pre, test)
        m = classification_metrics(test.is_fraud, p)
        gates = [gate_min_quality(m), gate_no_regression(m['auprc'], auprc_prod, positives=m['positives']),
                 gate_no_regression_paired(test.is_fraud, p, p_prod, tolerance=0.05)]
        assert not any(g.passed for g in gates) and gates[2].detail.startswith('worse'), (seed, gates)
