"`OpenAIAnswerer` over HTTP: a scripted OpenAI-compatible endpoint (a test fixture) for the well-formed, retried, refused and abstaining paths; mlsys's own `/v1` server with a tiny language model for the mechanics end to end."
import json, re, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import pytest
from conftest import post
from mlsys.rag import DEFAULT, Document, Embedder, HybridSearcher, chunk_corpus
from mlsys.rag_answer import PROMPT_VERSION, OpenAIAnswerer
from mlsys.rag_guard import QUOTE_OPEN

openai = pytest.importorskip('openai')
pytestmark = [pytest.mark.service, pytest.mark.xdist_group('rag_llm')]
DOCS = [Document('search.md', '# Search\n\n## Fusion\n\nReciprocal rank fusion adds one over sixty plus the rank of '
                 'an item in each list.\n\n## BM25\n\nBM25 scores a document by term frequency, saturated, and by how '
                 'rare each term is.\n'),
        Document('serving.md', '# Serving\n\n## Canary\n\nA canary release sends a small share of traffic to the new '
                 'model and watches its error rate.\n')]
QUESTIONS = ['How does reciprocal rank fusion combine lists?', 'What does a canary release watch?',
             'How does BM25 score a document?', 'What is the capital of Mongolia?']


@pytest.fixture(scope='module')
def searcher(tmp_path_factory):
    return HybridSearcher(chunk_corpus(DOCS, DEFAULT['strategy']), Embedder(cache=tmp_path_factory.mktemp('emb')))


class ScriptedEndpoint:
    "Test fixture: a local OpenAI-compatible `/v1/chat/completions` that answers with scripted replies, recording each request."
    def __init__(self):
        self.replies, self.requests = [], []
        outer = self
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
                outer.requests.append({'path': self.path, 'headers': {k.lower(): v for k, v in self.headers.items()}, 'body': body})
                reply = outer.replies.pop(0) if outer.replies else ''
                if callable(reply): reply = reply(body)                # a reply computed from the request
                if isinstance(reply, int):                       # a status code: the endpoint fails
                    self.send_response(reply); self.send_header('Content-Type', 'application/json'); self.end_headers()
                    self.wfile.write(b'{"error": {"message": "scripted failure"}}')
                    return
                out = json.dumps({'id': f'scripted-{len(outer.requests)}', 'object': 'chat.completion', 'created': 0,
                                  'model': body['model'], 'choices': [{'index': 0, 'finish_reason': 'stop',
                                  'message': {'role': 'assistant', 'content': reply}}]}).encode()
                self.send_response(200); self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(out))); self.end_headers()
                self.wfile.write(out)
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.server.server_port}/v1'
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def script(self, *replies):
        self.replies[:], self.requests[:] = list(replies), []


@pytest.fixture(scope='module')
def endpoint():
    e = ScriptedEndpoint()
    yield e
    e.server.shutdown()
    e.server.server_close()


def answer(chunk_id, quote='rank'):
    return json.dumps({'answer': 'By adding reciprocal ranks.', 'citations': [{'chunk_id': chunk_id, 'quote': quote}]})


def test_well_formed_answer_carries_template_and_quoted_chunks(searcher, endpoint):
    hits = [c for c, _ in searcher.search(QUESTIONS[0], 3, DEFAULT['retriever'])]
    endpoint.script('Here you go:\n```json\n' + answer(hits[0].id) + '\n```')
    a = OpenAIAnswerer(searcher, 'scripted', base_url=endpoint.url, api_key='k').answer(QUESTIONS[0], 3)
    assert not a.abstained and [c.chunk_id for c in a.citations] == [hits[0].id] and a.features['attempts'] == 1
    assert a.citations[0].path == 'Search > Fusion'
    (req,) = endpoint.requests
    assert req['path'] == '/v1/chat/completions' and req['headers']['x-prompt-version'] == PROMPT_VERSION
    system, user = req['body']['messages']
    assert system['content'].startswith(f'Prompt template {PROMPT_VERSION}') and req['body']['temperature'] == 0
    assert user['content'].count(QUOTE_OPEN) == 1 + 3 and all(c.id in user['content'] for c in hits)
    assert user['content'].endswith(f'Question: {QUESTIONS[0]}')


def test_invalid_citation_is_retried_once_then_refused(searcher, endpoint):
    hits = [c for c, _ in searcher.search(QUESTIONS[0], 3, DEFAULT['retriever'])]
    endpoint.script(answer('f' * 16), answer(hits[1].id))                 # a chunk never retrieved, then a good one
    ans = OpenAIAnswerer(searcher, 'scripted', base_url=endpoint.url, api_key='k')
    a = ans.answer(QUESTIONS[0], 3)
    assert not a.abstained and a.citations[0].chunk_id == hits[1].id and a.features['attempts'] == 2
    retry = endpoint.requests[1]['body']['messages']
    assert len(retry) == 4 and 'f' * 16 in retry[-1]['content'] and 'not one of the 3 retrieved' in retry[-1]['content']
    endpoint.script(answer('f' * 16), 'Sorry, I cannot produce JSON.')
    a = ans.answer(QUESTIONS[0], 3)
    assert a.abstained and a.citations == [] and len(endpoint.requests) == 2 and 'after a retry' in a.features['refused']
    endpoint.script('{"answer": "I don\'t know", "citations": [], "abstained": true}')
    a = ans.answer(QUESTIONS[3], 3)
    assert a.abstained and a.nearest and len(endpoint.requests) == 1


def test_endpoint_failure_abstains_without_raising(searcher, endpoint):
    endpoint.script(500)
    a = OpenAIAnswerer(searcher, 'scripted', base_url=endpoint.url, api_key='k').answer(QUESTIONS[1])
    assert a.abstained and 'InternalServerError' in a.features['error']
    a = OpenAIAnswerer(searcher, 'scripted', base_url='http://127.0.0.1:9/v1', api_key='k', timeout=2).answer(QUESTIONS[1])
    assert a.abstained and 'could not be reached' in a.text


def test_missing_openai_package_is_named(searcher, monkeypatch):
    monkeypatch.setitem(sys.modules, 'openai', None)
    with pytest.raises(ImportError, match="pip install 'openai>=1'"): OpenAIAnswerer(searcher, 'm', base_url='http://x/v1')


@pytest.fixture(scope='module')
def tiny_lm_server(tmp_path_factory):
    "A real `mlsys serve` with a tiny language model in production (as in test_llm_serve), long enough a context for the prompt."
    from mlsys.config import Workspace
    from mlsys.llm import register_lm, seed_text, train_lm
    from mlsys.llm_serve import MODEL_NAME
    from mlsys.registry import Registry
    from mlsys.server import start_server
    text = seed_text()
    lm = train_lm(text[:len(text) // 8], steps=5, block=32, batch_size=8, vocab_size=512, d_model=64, max_len=2048,
                  accelerator='cpu', logger=False)
    ws = Workspace(tmp_path_factory.mktemp('llm')/'workspace')
    reg = Registry(ws.models)
    reg.promote(MODEL_NAME, register_lm(reg, lm, MODEL_NAME), reason='test', force=True)
    s = start_server(ws.root, '--no-prediction-log')
    yield s, MODEL_NAME
    s.stop()


def test_against_mlsys_llm_server(searcher, tiny_lm_server):
    "The tiny model writes no grounded JSON: every question is retried once, then abstains; every request is answered (no 5xx)."
    s, name = tiny_lm_server
    ans = OpenAIAnswerer(searcher, name, base_url=s.url('/v1'), api_key='unused', max_tokens=24)
    answers = [ans.answer(q, 2) for q in QUESTIONS]
    rates = {'answered': sum(not a.abstained for a in answers) / len(answers),
             'abstained': sum(a.abstained for a in answers) / len(answers)}
    print('tiny-lm through OpenAIAnswerer:', rates, [a.features for a in answers])   # the measured rates (-s shows them)
    assert all('error' not in a.features for a in answers), [a.features for a in answers]
    assert len(ans.calls) == 2 * len(QUESTIONS) and all(c['model'] == name and c['id'] for c in ans.calls)
    assert all(c['prompt_version'] == PROMPT_VERSION and c['usage']['prompt_tokens'] > 0 for c in ans.calls)
    for a in answers:      # whatever the model wrote, nothing unchecked comes back
        assert a.abstained or {c.chunk_id for c in a.citations} <= {c.id for c in searcher.chunks}


def cite_first_source(body):
    "A scripted reply citing the first chunk quoted in the request, as a grounded model would."
    user = body['messages'][-1]['content']
    return answer(re.search(r'\(source: ([0-9a-f]{16})\)', user).group(1))


def test_ask_endpoint_answers_through_the_configured_llm(searcher, endpoint, tmp_path):
    "`mlsys serve` with `MLSYS_RAG_LLM_URL`/`_MODEL` set: /ask answers through the endpoint, restricted chunks never reach it."
    from mlsys.config import Workspace
    from mlsys.rag_serve import build_index, publish_index
    from mlsys.server import start_server
    staff = Document('internal.md', '# Internal\n\n## Bonus\n\nThe on-call bonus is 400 euros a week.\n')
    ws = Workspace(tmp_path/'workspace')
    publish_index(ws, build_index(DOCS + [staff], searcher.embedder, tags={'internal.md': ['staff']}, threshold=0.3))
    s = start_server(ws.root, env={'OMP_NUM_THREADS': '1', 'MLSYS_RAG_LLM_URL': endpoint.url,
                                   'MLSYS_RAG_LLM_MODEL': 'scripted'})
    try:
        endpoint.script(cite_first_source, answer('f' * 16), answer('f' * 16), 500)
        code, out = post(s.url('/ask'), {'question': 'How much is the on-call bonus?', 'k': 3})
        a = out['predictions'][0]
        assert code == 200 and not a['abstained'] and a['citations'][0]['chunk_id'] in {r['chunk_id'] for r in a['retrieved']}
        assert 'internal.md' not in json.dumps(endpoint.requests) and '400 euros' not in json.dumps(endpoint.requests)
        code, out = post(s.url('/ask'), {'question': QUESTIONS[0]})
        assert code == 200 and out['predictions'][0]['abstained'] and out['predictions'][0]['reasons'] == ['invalid_answer']
        code, out = post(s.url('/ask'), {'question': QUESTIONS[1]})
        assert code == 200 and out['predictions'][0]['reasons'] == ['llm_unavailable'], out
        assert len(endpoint.requests) == 4 and all(r['body']['model'] == 'scripted' for r in endpoint.requests)
    finally: s.stop()


