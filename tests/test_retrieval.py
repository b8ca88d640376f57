"""`mlsys.retrieval`: the annoy index's save/load/mmap round trip, swaps under a reader, refusal of an index that does
not fit, filters, and the benchmark's record."""
import json, os, threading
from pathlib import Path

import numpy as np
import pytest

from mlsys.config import Workspace
from mlsys.retrieval import IndexMismatch, ItemIndex, catalogue, exact_search, open_current, publish, recall_at_k

N = 3_000


@pytest.fixture(scope='module')
def data():
    vectors, genres, queries = catalogue(N, 60, seed=3)
    return vectors, genres, queries, exact_search(vectors, queries)


@pytest.fixture(scope='module')
def index(data):
    return ItemIndex.build(np.arange(100, 100 + N), data[0], n_trees=10)


def test_save_load_mmap_round_trip(tmp_path, data, index):
    vectors, _, queries, _ = data
    folder = index.save(tmp_path/'ix')
    back = ItemIndex.load(folder, dim=vectors.shape[1], item_ids=np.arange(100, 100 + N))
    answers = lambda ix: [ix.search(q, 10, 2_000).tolist() for q in queries]
    assert answers(back) == answers(index)
    assert back.meta == index.meta and len(back) == N and isinstance(back.vectors, np.memmap)
    maps = Path('/proc/self/maps').read_text()
    for name in ('index.ann', 'vectors.npy'):                   # mapped, not read into memory
        assert str((folder/name).resolve()) in maps
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]    # no temporary folder left behind
    with pytest.raises(FileExistsError):
        index.save(folder)


def test_swap_is_atomic_for_a_reader(tmp_path, data):
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
        publish(ItemIndex.build(np.arange(n), vectors[:n], n_trees=5), root, keep=2)
    stop.set()
    for t in threads: t.join()
    assert errors == [] and len(sizes) >= 2
    assert len(open_current(root)) == 3_000 and len(list(root.glob('v*'))) == 2   # the newest version; old ones pruned


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


@pytest.mark.parametrize('share', [0.5, 0.1, 0.02, 0.001])
def test_filters_return_only_allowed_items(data, index, share):
    vectors, _, queries, _ = data
    allowed = np.random.default_rng(7).random(N) < share
    allowed[:2] = True                                       # never empty
    ids = np.arange(100, 100 + N)
    got = [index.search(q, 10, 2_000, allowed=allowed) for q in queries]
    want = [ids[np.flatnonzero(allowed)[exact_search(vectors[allowed], q)[0]]] for q in queries]
    assert all(np.isin(g, ids[allowed]).all() and len(g) == min(10, allowed.sum()) for g in got)
    k = min(10, int(allowed.sum()))
    assert recall_at_k(got, want, k) >= (1.0 if allowed.sum() <= 2_000 else 0.9)   # small allowed sets: exact


def test_filter_by_genre(data, index):
    vectors, genres, queries, _ = data
    comedy = genres == 1
    got = np.concatenate([index.search(q, 10, 2_000, allowed=comedy) for q in queries]) - 100
    assert (genres[got] == 1).all()


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
    labels = {'annoy_recall_at_10', 'annoy_speedup_vs_exact', 'best_ann_recall_at_10', 'best_ann_speedup_vs_exact'}
    assert labels <= set(r)
    assert r['annoy_recall_at_10'] >= 0.95 and r['best_ann_recall_at_10'] >= 0.95   # quality asserted; speed reported
    methods = {row['method'] for row in rec['results']}
    assert {'annoy', 'faiss hnsw', 'pq + re-rank', 'exact', 'exact (batched)'} <= methods
    assert sum(bool(row.get('best_ann')) for row in rec['results']) == 1
