"""`mlsys.retrieval`: both kinds of item index (faiss HNSW, which the recommender serves with, and annoy): the
save/load/mmap round trip, swaps under a reader (also from one kind to the other), refusal of an index that does not
fit, filters inside the search, and the benchmark's record."""
import json, os, threading
from pathlib import Path

import numpy as np
import pytest

from mlsys.config import Workspace
import mlsys.retrieval
from mlsys.retrieval import (ANNOY, SERVING, HNSWIndex, IndexMismatch, ItemIndex, build_served, catalogue, exact_search,
                             open_current, publish, recall_at_k)

N = 3_000


@pytest.fixture(scope='module')
def data():
    vectors, genres, queries = catalogue(N, 60, seed=3)
    return vectors, genres, queries, exact_search(vectors, queries)


KINDS = {'hnsw': SERVING, 'annoy': ANNOY | {'n_trees': 10}}


@pytest.fixture(scope='module', params=list(KINDS))
def index(request, data):
    return build_served(np.arange(100, 100 + N), data[0], KINDS[request.param])


def test_save_load_mmap_round_trip(tmp_path, data, index):
    vectors, _, queries, _ = data
    folder = index.save(tmp_path/'ix')
    back = ItemIndex.load(folder, dim=vectors.shape[1], item_ids=np.arange(100, 100 + N))
    answers = lambda ix: [ix.search(q, 10).tolist() for q in queries]
    assert answers(back) == answers(index)
    assert type(back) is type(index) and back.meta == index.meta and back.meta['kind'] == index.kind
    assert len(back) == N and isinstance(back.vectors, np.memmap) and back.opened == 'mapped'
    maps = Path('/proc/self/maps').read_text()
    for name in (index.file, 'vectors.npy'):                    # mapped, not read into memory (HNSW: its vectors part)
        assert str((folder/name).resolve()) in maps
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]    # no temporary folder left behind
    with pytest.raises(FileExistsError):
        index.save(folder)


def test_swap_is_atomic_for_a_reader(tmp_path, data):
    "Versions of the served kind, and a change of kind (annoy to HNSW), published under two readers."
    vectors, _, queries, _ = data
    root = tmp_path/'live'
    publish(ItemIndex.build(np.arange(1_000), vectors[:1_000], n_trees=5), root)
    stop, sizes, errors = threading.Event(), set(), []

    def reader():
        while not stop.is_set():
            try:
                assert os.path.lexists(root/'current')        # never a moment without an index
                ix = open_current(root, dim=vectors.shape[1])
                ids = ix.search(queries[len(sizes) % 60], 10)
                assert len(ix) == ix.meta['n_items'] == len(ix.item_ids)
                assert len(ids) == 10 and np.isin(ids, ix.item_ids).all()
                sizes.add(len(ix))
            except Exception as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads: t.start()
    for n in (1_500, 2_000, 2_500, 3_000):
        publish(build_served(np.arange(n), vectors[:n], SERVING | {'M': 8}), root, keep=2)
    stop.set()
    for t in threads: t.join()
    assert errors == [] and len(sizes) >= 2
    newest = open_current(root)
    assert len(newest) == 3_000 and type(newest) is HNSWIndex and len(list(root.glob('v*'))) == 2   # old ones pruned


def test_failed_publish_leaves_the_current_index(tmp_path, data, monkeypatch):
    vectors = data[0]
    root = tmp_path/'live'
    publish(ItemIndex.build(np.arange(500), vectors[:500], n_trees=5), root)
    before = os.readlink(root/'current')

    def broken(*a, **kw): raise OSError('disk full')
    monkeypatch.setattr(np, 'save', broken)
    with pytest.raises(OSError, match='disk full'):
        publish(ItemIndex.build(np.arange(800), vectors[:800], n_trees=5), root)
    monkeypatch.undo()
    assert os.readlink(root/'current') == before and len(open_current(root)) == 500
    assert [p.name for p in root.iterdir() if p.name.startswith('.')] == []        # the half-written folder is gone


def test_mismatched_index_is_refused_naming_both(tmp_path, data, index):
    folder = index.save(tmp_path/'ix')
    with pytest.raises(IndexMismatch, match="dimension 32, the model's embeddings have 64"):
        ItemIndex.load(folder, dim=64)
    with pytest.raises(IndexMismatch, match=r'holds 3,000 items, the catalogue has 3,001: 2 catalogue items not in the '
                       r'index \(e.g. \[0, 3100\]\), 1 index items not in the catalogue \(e.g. \[100\]\)'):
        ItemIndex.load(folder, item_ids=np.r_[0, np.arange(101, 100 + N), 3100])
    with pytest.raises(IndexMismatch, match='same items in another order'):
        ItemIndex.load(folder, item_ids=np.arange(100, 100 + N)[::-1])
    if index.kind == 'annoy':                                   # a kind's own `load` wants its own kind
        with pytest.raises(IndexMismatch, match='is annoy, not hnsw'):
            HNSWIndex.load(folder)


def test_unknown_kind_and_missing_kind(tmp_path, data, index):
    folder = index.save(tmp_path/'ix')
    meta = json.loads((folder/'meta.json').read_text())
    (folder/'meta.json').write_text(json.dumps(meta | {'kind': 'scann'}))
    with pytest.raises(IndexMismatch, match="is of kind 'scann'; this mlsys opens \\['annoy', 'hnsw'\\]"):
        ItemIndex.load(folder)
    if index.kind == 'annoy':                                 # versions saved before the kind was recorded: annoy
        (folder/'meta.json').write_text(json.dumps({k: v for k, v in meta.items() if k != 'kind'}))
        assert type(ItemIndex.load(folder)) is ItemIndex


def test_hnsw_reads_whole_when_faiss_cannot_map(tmp_path, data, monkeypatch):
    "An index type whose reader refuses the mmap flags is read whole; `opened` says so and the answers are the same."
    import faiss
    ix = build_served(np.arange(N), data[0])
    folder = ix.save(tmp_path/'ix')
    read = faiss.read_index
    def refuse(path, flags=0):
        if flags: raise RuntimeError('Error: mmap not supported for this index type')
        return read(path)
    monkeypatch.setattr(faiss, 'read_index', refuse)
    back = ItemIndex.load(folder, dim=32, item_ids=np.arange(N))
    answers = lambda i: [i.search(q, 10).tolist() for q in data[2]]
    assert back.opened == 'read' and answers(back) == answers(ix)
    assert back.memory()['graph_bytes'] == ix.memory()['graph_bytes'] > 0


@pytest.mark.parametrize('share', [0.5, 0.1, 0.02, 0.001])
def test_filters_return_only_allowed_items(data, index, share):
    vectors, _, queries, _ = data
    allowed = np.random.default_rng(7).random(N) < share
    allowed[:2] = True                                       # never empty
    ids = np.arange(100, 100 + N)
    got = [index.search(q, 10, allowed=allowed) for q in queries]
    want = [ids[np.flatnonzero(allowed)[exact_search(vectors[allowed], q)[0]]] for q in queries]
    assert all(np.isin(g, ids[allowed]).all() and len(g) == min(10, allowed.sum()) for g in got)
    k = min(10, int(allowed.sum()))
    assert recall_at_k(got, want, k) >= (1.0 if allowed.sum() <= 2_000 else 0.9)   # small allowed sets: exact


def test_filter_by_genre(data, index):
    vectors, genres, queries, _ = data
    comedy = genres == 1
    got = np.concatenate([index.search(q, 10, allowed=comedy) for q in queries]) - 100
    assert (genres[got] == 1).all()


@pytest.fixture(scope='module')
def wide():
    "A catalogue large enough for a graph walk to beat an exact scan of what a wide filter allows."
    vectors, _, queries = catalogue(20_000, 40, seed=5)
    return vectors, queries, build_served(np.arange(20_000), vectors)


@pytest.mark.parametrize('share', [0.9, 0.5, 0.1])
def test_filter_inside_the_graph(wide, share):
    "HNSW filters inside the search (an IDSelector, `ef` raised) when that costs less than an exact scan; else exact."
    vectors, queries, ix = wide
    allowed = np.random.default_rng(8).random(len(ix)) < share
    inside = [ix._allowed(q, 10, -1, allowed, allowed.sum()) for q in queries]
    want = [np.flatnonzero(allowed)[exact_search(vectors[allowed], q)[0]] for q in queries]
    if share == 0.1:                                            # ef raised to 1,280: 41k distances > 2,000 items
        assert all(p is None for p in inside)
    else:
        assert all(len(p) == 10 and allowed[p].all() for p in inside) and recall_at_k(inside, want) >= 0.95
    got = [ix.search(q, 10, allowed=allowed) for q in queries]
    assert recall_at_k(got, want) >= 0.95 and all(allowed[g].all() for g in got)


def test_filter_annoy_overfetch_without_exact_shortcut(data, monkeypatch):
    "Annoy's over-fetch alone (no exact shortcut for small allowed sets) returns only allowed items."
    vectors, _, queries, _ = data
    monkeypatch.setattr(mlsys.retrieval, 'FILTER_EXACT_BELOW', 0)
    ix = build_served(np.arange(N), vectors, ANNOY | {'n_trees': 10})
    allowed = np.random.default_rng(8).random(N) < 0.3
    got = [ix._allowed(q, 10, -1, allowed, allowed.sum()) for q in queries]
    want = [np.flatnonzero(allowed)[exact_search(vectors[allowed], q)[0]] for q in queries]
    assert all(allowed[g].all() for g in got) and recall_at_k(got, want) >= 0.9


def test_short_answer_completed(data):
    "A graph walk that stops short of a large k: `search` completes the answer exactly."
    small = HNSWIndex.build(np.arange(800), data[0][:800], M=4, ef=8)
    assert len(small.search(data[2][0], 800)) == 800


def test_bench_quick_writes_its_record(tmp_path, monkeypatch):
    "The index part runs for real; the recommender's NDCG part (minutes of training, run by 13a) is stood in for."
    import mlsys.ranking
    from mlsys.bench import run_bench
    arms = {'ndcg@10': {'popularity': {'mean': 0.2}, 'reranking': {'mean': 0.25}}}
    monkeypatch.setattr(mlsys.ranking, 'bench_recsys', lambda quick: ({'arms': arms}, {'ndcg_at_10_over_popularity': 1.25}))
    ws = Workspace(tmp_path/'ws')
    rec = run_bench('retrieval', ws, quick=True)
    assert rec['ratios']['ndcg_at_10_over_popularity'] == 1.25
    assert {'method': 'recommender: reranking', 'ndcg@10': 0.25} in rec['results']
    on_disk = json.loads((tmp_path/'ws'/'bench'/'retrieval.json').read_text())
    assert on_disk['ratios'] == rec['ratios'] and on_disk['name'] == 'retrieval'
    r = rec['ratios']
    labels = {'annoy_recall_at_10', 'annoy_speedup_vs_exact', 'best_ann_recall_at_10', 'best_ann_speedup_vs_exact',
              'served_recall_at_10', 'served_speedup_vs_exact'}
    assert labels <= set(r) and all(isinstance(r[k], float) for k in labels)
    assert r['served_index'] == f"faiss hnsw (M={SERVING['M']}, ef={SERVING['ef']})"
    assert r['annoy_setting'].startswith('annoy (n_trees=') and r['best_ann_setting']
    assert min(r['annoy_recall_at_10'], r['best_ann_recall_at_10'], r['served_recall_at_10']) >= 0.95   # speed reported
    methods = {row['method'] for row in rec['results']}
    assert {'annoy', 'faiss hnsw', 'pq + re-rank', 'exact', 'exact (batched)'} <= methods
    for marker in ('best_ann', 'best_annoy', 'served'):
        assert sum(bool(row.get(marker)) for row in rec['results']) == 1
