"The library calls the evaluate and register jobs are made of, in-process on a workspace a full run built: the window policy, registration."
import json

from conftest import run_record
from mlsys.evaluate import MIN_POSITIVES, evaluate_model
from mlsys.pipeline import stage_parameters
from mlsys.registry import Registry, register_run

FAST = {'latency_n': 50, 'bootstrap': 50}


def test_evaluate_model_widens_or_refuses_a_thin_window(production_ws, tmp_path):
    ws = production_ws(tmp_path/'workspace')
    reg = Registry(ws/'models')
    prod, production = reg.get('fraud', 'production'), reg.production('fraud')
    judged = evaluate_model(ws, tmp_path/'judged', prod['path'], production=production, **FAST)   # production against itself, on its own windows
    n_test = judged.window['test_positives']
    assert judged.window['name'] == 'test' and n_test >= MIN_POSITIVES and judged.passed, judged.gates
    assert judged.production_version == prod['version'] and judged.gates[1].detail.startswith('production')
    saved = json.loads((tmp_path/'judged'/'evaluation.json').read_text())
    assert saved['window'] == judged.window and [g['name'] for g in saved['gates']] == [g.name for g in judged.gates]

    # one positive short of the minimum: 'widen' judges validation + test, 'refuse' judges nothing
    wide = evaluate_model(ws, tmp_path/'wide', prod['path'], production=production, min_positives=n_test + 1, **FAST)
    assert wide.window['name'] == 'validation + test' and wide.window['positives'] > n_test and len(wide.frame) > len(judged.frame)
    assert not any(g.detail.startswith('insufficient evidence') for g in wide.gates), wide.gates
    refused = evaluate_model(ws, tmp_path/'refused', prod['path'], production=production, min_positives=n_test + 1, on_insufficient='refuse', **FAST)
    assert refused.window['name'] == 'test' and len(refused.frame) == len(judged.frame) and not refused.passed
    assert [g.name for g in refused.gates if g.detail.startswith('insufficient evidence')] == ['min quality', 'no regression', 'slice gap']
    assert refused.cost == judged.cost   # thresholds and their price do not depend on the window the gates judge


def test_register_run_promotes_only_a_judged_model(production_ws, tmp_path):
    ws = production_ws(tmp_path/'workspace')
    run_dir, rec = run_record(production_ws.original_proc)
    run = ws/'runs'/run_dir.name   # the run, in the private copy
    reg = Registry(ws/'models')
    done = register_run(ws, run, stage_parameters('train'))   # the run's model again: its gates passed, so it replaces version 1
    assert (done['version'], done['stage'], done['gates_passed'], done['insufficient_evidence']) == (2, 'production', True, [])
    assert reg.get('fraud', 1)['stage'] == 'archived' and reg.lineage('fraud', 2)['run_id'] == rec['run_id']
    evaluation = json.loads((run/'evaluate'/'evaluation.json').read_text())
    slice_gap = next(g for g in evaluation['gates'] if g['name'] == 'slice gap')
    slice_gap |= {'passed': False, 'detail': 'insufficient evidence: overall auroc on a window with 12 positives'}
    (run/'evaluate'/'evaluation.json').write_text(json.dumps(evaluation))
    done = register_run(ws, run, stage_parameters('train'))
    assert (done['version'], done['stage'], done['insufficient_evidence']) == (3, 'staging', ['slice gap'])
    assert reg.get('fraud', 'production')['version'] == 2
