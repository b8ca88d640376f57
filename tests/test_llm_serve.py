"`mlsys serve` with a production language model: the official `openai` client against the real process (completions, chat, streaming, stop, errors), a client that leaves mid-stream frees its KV blocks, and a full KV budget answers 503 with Retry-After."
import asyncio, re, time
import httpx
import pytest
from mlsys.config import Workspace
from mlsys.llm import generate, register_lm, seed_text, train_lm
from mlsys.llm_serve import MODEL_NAME, LLMPredictor, chat_prompt, Message, llm_predictors, mount_llm
from mlsys.registry import Registry
from mlsys.server import create_app, start_server

openai = pytest.importorskip('openai')
pytestmark = [pytest.mark.service, pytest.mark.xdist_group('llm_serve')]
CONTEXT = 512
ENGINE_FLAGS = ('--kv-blocks', '64', '--block-size', '8', '--max-seqs', '6', '--prefill-chunk', '24')


@pytest.fixture(scope='module')
def lm():
    "A tiny model trained for a few steps on a slice of the guide."
    text = seed_text()
    return train_lm(text[:len(text) // 4], steps=10, block=32, batch_size=8, vocab_size=512, d_model=64,
                    max_len=CONTEXT, accelerator='cpu', logger=False)


@pytest.fixture(scope='module')
def served(lm, tmp_path_factory):
    "A real `mlsys serve` process over a workspace where `tiny-lm` is in production."
    ws = Workspace(tmp_path_factory.mktemp('llm')/'workspace')
    reg = Registry(ws.models)
    reg.promote(MODEL_NAME, register_lm(reg, lm, MODEL_NAME), reason='test', force=True)
    s = start_server(ws.root, '--no-prediction-log', *ENGINE_FLAGS)   # every request below: chunked, shared prefixes
    s.ws = ws
    yield s
    s.stop()


@pytest.fixture(scope='module')
def client(served):
    return openai.OpenAI(base_url=served.url('/v1'), api_key='unused', max_retries=0, timeout=60)


def greedy(lm, text, n): return lm.tok.decode(generate(lm.model, lm.tok.encode(text), n))


def scrape(served) -> dict:
    "The `mlsys_llm_*` samples of the server's /metrics."
    text = httpx.get(served.url('/metrics')).text
    return {l.split(' ')[0]: float(l.split(' ')[1]) for l in text.splitlines() if l.startswith('mlsys_llm')}


def test_no_model_no_routes(tmp_path):
    "Without a language model in production there are no LLM routes, and the server starts as before."
    assert llm_predictors(Workspace(tmp_path/'ws')) == {}


def test_openai_completions_and_models(client, lm, served):
    "The official client, unmodified: models, a greedy completion equal to `generate`, usage; the OpenAPI doc renders."
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    r = client.completions.create(model=MODEL_NAME, prompt='The KV cache', max_tokens=10, temperature=0)
    assert r.choices[0].text == greedy(lm, 'The KV cache', 10)
    assert (r.choices[0].finish_reason, r.usage.completion_tokens) == ('length', 10)
    assert r.usage.prompt_tokens == len(lm.tok.encode('The KV cache'))
    assert httpx.get(served.url('/openapi.json')).status_code == 200


def test_openai_chat_and_streaming(client, lm):
    "Chat (the `role: content` template) whole and streamed give the same greedy text; so do completions."
    msgs = [{'role': 'system', 'content': 'Answer briefly.'}, {'role': 'user', 'content': 'What is batching?'}]
    whole = client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=12, temperature=0)
    want = greedy(lm, chat_prompt([Message(**m) for m in msgs]), 12)
    assert whole.choices[0].message.content == want and whole.choices[0].message.role == 'assistant'
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == 'assistant'
    assert ''.join(c.choices[0].delta.content or '' for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == 'length'
    parts = list(client.completions.create(model=MODEL_NAME, prompt='Paged', max_tokens=8, temperature=0, stream=True))
    assert ''.join(p.choices[0].text for p in parts) == greedy(lm, 'Paged', 8)
    assert parts[-1].choices[0].finish_reason == 'length'


def test_stop_and_sampling(client, lm):
    "A stop string cuts the text before it (finish_reason stop), streamed or not; sampling with a seed repeats."
    full = greedy(lm, 'The model', 30)
    words = [w for w in re.findall(r'\S+', full[len(full) // 3:]) if len(w) > 1]
    stop = words[0] if words else full[-3:]
    want = full[:full.find(stop)]
    r = client.completions.create(model=MODEL_NAME, prompt='The model', max_tokens=30, temperature=0, stop=[stop])
    assert (r.choices[0].text, r.choices[0].finish_reason) == (want, 'stop')
    parts = list(client.completions.create(model=MODEL_NAME, prompt='The model', max_tokens=30, temperature=0,
                                           stop=stop, stream=True))
    assert ''.join(p.choices[0].text for p in parts) == want and parts[-1].choices[0].finish_reason == 'stop'
    a, b = (client.completions.create(model=MODEL_NAME, prompt='A', max_tokens=8, temperature=1.0, seed=7)
            for _ in range(2))
    assert a.choices[0].text == b.choices[0].text


def test_bad_input(client, lm):
    "Each refusal is the client's exception with the field in `param`; a long prompt names both lengths."
    def refused(exc, **kw):
        with pytest.raises(exc) as e: client.completions.create(**{'model': MODEL_NAME, 'prompt': 'x', **kw})
        return e.value.body
    assert refused(openai.BadRequestError, max_tokens=0)['param'] == 'max_tokens'
    assert refused(openai.BadRequestError, max_tokens=CONTEXT)['param'] == 'max_tokens'
    assert refused(openai.NotFoundError, model='gpt-9')['param'] == 'model'
    assert refused(openai.BadRequestError, n=2)['param'] == 'n'
    long = 'token ' * CONTEXT
    body = refused(openai.BadRequestError, prompt=long)
    n = len(lm.tok.encode(long))
    assert body['param'] == 'prompt' and f'{n} tokens' in body['message'] and f'context is {CONTEXT}' in body['message']
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=[{'role': 'robot', 'content': 'hi'}])
    assert e.value.body['param'] == 'messages.0.role'
    with pytest.raises(openai.BadRequestError) as e: client.chat.completions.create(model=MODEL_NAME, messages=[])
    assert e.value.body['param'] == 'messages'


def test_disconnect_frees_blocks(served):
    "A client that leaves after the first chunk: its sequence stops early and the allocator gets every block back."
    before = scrape(served)
    body = {'model': MODEL_NAME, 'prompt': 'The', 'max_tokens': CONTEXT - 8, 'temperature': 0, 'stream': True}
    with httpx.stream('POST', served.url('/v1/completions'), json=body, timeout=30) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    for _ in range(100):
        m = scrape(served)
        if m['mlsys_llm_running'] == 0 and m['mlsys_llm_kv_blocks_used'] == 0: break
        time.sleep(0.05)
    assert m['mlsys_llm_kv_blocks_used'] == 0
    assert m['mlsys_llm_kv_blocks_allocated'] == m['mlsys_llm_kv_blocks_released']
    assert m['mlsys_llm_kv_blocks_allocated'] > before['mlsys_llm_kv_blocks_allocated']
    made = m['mlsys_llm_generated_tokens_total'] - before['mlsys_llm_generated_tokens_total']
    assert made < CONTEXT - 8, made   # cancelled, not run to the end
    assert m['mlsys_llm_ttft_seconds_count'] > 0 and m['mlsys_llm_tpot_seconds_count'] > 0


def test_full_kv_budget_503(lm, tmp_path):
    "A budget of one context held by another sequence: a request waits for blocks, then gets 503 with Retry-After; once the blocks are back it is answered; a full queue answers 503 too."
    ws = Workspace(tmp_path/'ws')
    def builder(**kw):
        def build(ctx): return LLMPredictor(ctx.ws, ctx.metrics, model=lm.model, tok=lm.tok, **kw)
        build.mount = mount_llm
        return {'/v1': build}
    body = {'model': MODEL_NAME, 'prompt': ' '.join(['cache'] * 75), 'max_tokens': 8, 'temperature': 0}
    async def go(routes, hold:bool):
        app = create_app(ws, store=None, predictors=routes)
        async with app.router.lifespan_context(app):
            paged = app.state.predictors['/v1'].engine.paged
            # another sequence holds the whole budget (deterministic: racing a first request timed out under CI's load)
            if hold: assert paged.admit('holder', CONTEXT) and paged.alloc.n_free == 0
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url='http://lm', timeout=60) as c:
                refused = await c.post('/v1/completions', json=body)
                if hold: paged.finish('holder')
                answered = await c.post('/v1/completions', json=body)
            return refused, answered, paged.alloc.n_used
    refused, answered, used = asyncio.run(go(builder(n_blocks=CONTEXT // 16, queue_timeout_s=1.0), True))
    assert refused.status_code == 503 and answered.status_code == 200, (refused.text, answered.text)
    assert refused.headers['retry-after'] == '1' and 'KV blocks' in refused.json()['error']['message']
    assert used == 0
    first, second, _ = asyncio.run(go(builder(max_waiting=0), False))
    assert first.status_code == second.status_code == 503 and 'max_waiting=0' in second.json()['error']['message']


def test_engine_flags_shown_and_checked(served, client, lm, capsys):
    "`mlsys serve`'s engine flags reach the engine: /v1/models and /metrics show them; a bad value exits 2 naming it."
    from mlsys.cli import main
    info = httpx.get(served.url('/v1/models')).json()['data'][0]['mlsys']
    assert {k: info[k] for k in ('kv_blocks', 'block_size', 'max_seqs', 'prefill_chunk', 'share_prefix')} == \
        {'kv_blocks': 64, 'block_size': 8, 'max_seqs': 6, 'prefill_chunk': 24, 'share_prefix': True}
    assert client.models.list().data[0].id == MODEL_NAME          # the extra entry does not bother the client
    m = scrape(served)
    assert (m['mlsys_llm_kv_blocks_total'], m['mlsys_llm_kv_block_size'], m['mlsys_llm_max_seqs'],
            m['mlsys_llm_prefill_chunk']) == (64, 8, 6, 24)
    system = 'You are a careful assistant for machine learning systems. ' * 3
    long_q, q = system + 'What is paging?', system + 'What is batching?'
    post = lambda prompt, k: httpx.post(served.url('/v1/completions'), timeout=60, json={
        'model': MODEL_NAME, 'prompt': prompt, 'max_tokens': k, 'temperature': 0}).json()
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:   # the first runs hundreds of steps: the second arrives while it holds its blocks
        first = pool.submit(post, long_q, CONTEXT - len(lm.tok.encode(long_q)) - 1)
        deadline = time.monotonic() + 60   # its prompt computed (not a fixed sleep: a loaded machine is slower)
        while scrape(served)['mlsys_llm_prefill_tokens'] - m['mlsys_llm_prefill_tokens'] < len(lm.tok.encode(long_q)):
            assert time.monotonic() < deadline and not first.done(), 'the first request was not prefilled within 60 s'
            time.sleep(0.005)
        second = pool.submit(post, q, 6)
        assert second.result()['choices'][0]['text'] == greedy(lm, q, 6)
        assert first.result()['usage']['completion_tokens'] > 0
    shared = scrape(served)['mlsys_llm_prefix_cached_tokens'] - m['mlsys_llm_prefix_cached_tokens']
    assert shared >= 8 * (len(lm.tok.encode(system)) // 8 - 1), shared   # its full blocks, bar a boundary token
    for flags, msg in [(('--kv-blocks', '3'), '--kv-blocks 3: the budget of 3 blocks of 16 tokens must hold one full '
                                              f'context ({CONTEXT} tokens, {CONTEXT // 16} blocks)'),
                       (('--prefill-chunk', '0'), '--prefill-chunk 0: must be an integer >= 1'),
                       (('--block-size', '0'), '--block-size 0: must be an integer >= 1')]:
        assert main(['serve', '--workspace', str(served.ws.root), *flags]) == 2
        assert msg in capsys.readouterr().err
