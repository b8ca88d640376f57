"`mlsys capacity` end to end and the capacity calculators' refusals: every bad input is named, with its value and rule."
import json, math
import pytest
from conftest import ROOT, mlsys, mlsys_main
from mlsys.capacity import (CapacityError, break_even_tokens_per_day, finetune_memory, gpu_cost, gpus_to_hold, kv_bytes_per_token,
                            kv_cache, kv_fits, lora_params, model_memory, serving_plan, token_cost)

EXAMPLE = ROOT/'nbs'/'capacity.example.yaml'
ROW = {'model': 'gpt-4o', 'requests_per_day': 100, 'input_tokens': 10, 'output_tokens': 10}


def test_capacity_command_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path/'capacity.json'
    p = mlsys('capacity', EXAMPLE, '--json', out, '--workspace', tmp_path)   # the installed command, in its own process
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert lines[0].split() == ['section', 'quantity', 'value', 'unit'] and lines[-1] == str(out)
    table = '\n'.join(lines)
    for section in ('kv_cache', 'model', 'finetune', 'serving', 'tokens', 'vector_index', 'fraud_roi'): assert section in table
    rows = {(r['section'], r['quantity']): r['value'] for r in json.loads(out.read_text())['rows']}
    assert rows['kv_cache', 'per token'] == 320 and rows['serving', 'GPUs'] == 20 and rows['fraud_roi', 'return on cost'] == 3
    assert math.isclose(rows['kv_cache', '32 sequences'], 42.95, rel_tol=1e-3)
    assert json.loads(out.read_text())['inputs']['kv_cache']['n_layers'] == 80


@pytest.mark.parametrize('text, message', [
    ('kv_cache: {n_layers: 0, n_kv_heads: 8, head_dim: 128, seq_len: 4096}\n', 'kv_cache.n_layers=0: Input should be greater than 0'),
    ('serving: {requests_per_second: 10, batch_seconds: 0.1, batch_szie: 32}\n', 'serving.batch_szie=32: unknown key'),
    ('model: {n_params: 7.0e+9, dtype: fp8}\n', "model.dtype='fp8'"),
    ('tokens: {traffic: [{model: gpt-5, requests_per_day: 1, input_tokens: 1, output_tokens: 1}]}\n', "unknown model 'gpt-5'"),
    ('fraud_roi: {annual_volume_usd: 1, fraud_rate: 2, recall_gain: 0.1, annual_cost_usd: 1}\n', 'fraud_roi.fraud_rate=2'),
    ('kv_cache: [\n', 'not valid YAML'),
    ('', 'must be a mapping'),
    ('gpus: 3\n', 'gpus=3: unknown key'),
])
def test_capacity_command_refuses_a_bad_file_naming_the_field(tmp_path, text, message):
    f = tmp_path/'bad.yaml'
    f.write_text(text)
    p = mlsys_main('capacity', f, '--workspace', tmp_path, '--json', tmp_path/'out.json')
    assert p.returncode == 2 and message in p.stderr and str(f) in p.stderr, p.stderr
    assert p.stdout == '' and not (tmp_path/'out.json').exists()   # nothing printed or written


def test_capacity_command_missing_file_is_a_usage_error(tmp_path):
    p = mlsys_main('capacity', tmp_path/'nowhere.yaml', '--workspace', tmp_path)
    assert p.returncode == 2 and 'cannot be read' in p.stderr


@pytest.mark.parametrize('call, name', [
    (lambda: kv_bytes_per_token(0, 8, 128), 'n_layers=0'),
    (lambda: kv_bytes_per_token(80, 8, -128), 'head_dim=-128'),
    (lambda: kv_bytes_per_token(80, 8, 128, 'fp8'), "dtype='fp8'"),
    (lambda: kv_bytes_per_token(80, True, 128), 'n_kv_heads=True'),
    (lambda: kv_cache(327_680, 4096, 0), 'concurrency=0'),
    (lambda: kv_cache(float('nan'), 4096), 'per_token=nan'),
    (lambda: kv_fits(80, -1, 1.3), 'weights_gb=-1'),
    (lambda: kv_fits(0, 35, 1.3), 'gpu_gb=0'),
    (lambda: model_memory(-7e9), 'n_params=-7000000000.0'),
    (lambda: model_memory(7e9, training='sgd'), "training='sgd'"),
    (lambda: gpus_to_hold(112, 0), 'gpu_gb=0'),
    (lambda: lora_params([(8192, 0)], 16, 80), 'd_out=0'),
    (lambda: finetune_memory(70e9, 'adapter', 1e6), "method='adapter'"),
    (lambda: finetune_memory(70e9, 'lora', 0), 'trainable=0'),
    (lambda: serving_plan(0, 32, 0.125), 'requests_per_second=0'),
    (lambda: serving_plan(5000, 32, 0), 'batch_seconds=0'),
    (lambda: serving_plan(5000, 32, 0.125, wait_seconds=-0.01), 'wait_seconds=-0.01'),
    (lambda: gpu_cost(20, -35), 'usd_per_gpu_hour=-35'),
    (lambda: token_cost([{**ROW, 'output_tokens': -1}]), 'traffic[0].output_tokens=-1'),
    (lambda: token_cost([{**ROW, 'model': 'gpt-5'}]), "traffic[0].model='gpt-5'"),
    (lambda: break_even_tokens_per_day(0, 6.25), 'fixed_usd_per_month=0'),
    (lambda: break_even_tokens_per_day(8500, 6.25, 6.25), 'self_usd_per_m=6.25'),
])
def test_calculators_refuse_bad_inputs_by_name(call, name):
    with pytest.raises(CapacityError) as e: call()
    assert name in str(e.value), str(e.value)


def test_calculators_edges():
    assert kv_fits(80, 140, 1.3) == 0                                     # weights larger than the GPU: nothing fits, no negative count
    assert kv_fits(80, 0, 80) == 1 and kv_fits(80, 0, 80.0001) == 0       # exactly full fits; a byte over does not
    assert serving_plan(5000, 1, 0.2)['gpus'] == 1000                     # an exact quotient is not rounded up
    assert serving_plan(5001, 1, 0.2)['gpus'] == 1001
    assert serving_plan(10, 1, 0.2, latency_target_seconds=0.1)['meets_latency'] is False
    assert gpus_to_hold(80, 80) == 1 and gpus_to_hold(80.1, 80) == 2
    assert model_memory(1e9, 'int4')['total_gb'] == 0.5
