"Ranking chain: IPW weights, re-ranking rules, save/load (atomic), cold start, index mismatch, NDCG against popularity."
import json
import os

import numpy as np
import pandas as pd
import pytest

from mlsys.ranking import (Recommender, evaluate_recommender, ipw_weights, mmr, train_recommender)
from mlsys.recsys import ALS, Popularity, evaluate, time_split
from mlsys.retrieval import IndexMismatch, ItemIndex
from mlsys.world import examination, simulate


@pytest.fixture(scope='module')
def world():
    return simulate(seed=0, n_days=28)


@pytest.fixture(scope='module')
def rec(world):
    return train_recommender(world, seed=0, bucket_sessions=20_000)


@pytest.fixture(scope='module')
def split(world):
    return time_split(world.interactions, 7)


def test_ipw_weights():
    exam = examination(np.arange(10))
    w = ipw_weights([0, 3, 9, 9], [1, 1, 1, 0], exam)
    np.testing.assert_allclose(w, [1, 1 / exam[3], 1 / exam[9], 1])
    assert ipw_weights([9], [1], exam, cap=2.0)[0] == 2.0


def test_mmr_cap_and_order():
    vecs = np.eye(4)
    assert mmr([4, 3, 2, 1], vecs, 4).tolist() == [0, 1, 2, 3]
    picked = mmr([4, 3, 2, 1], vecs, 4, genres=np.array(['a', 'a', 'a', 'b']), max_per_genre=1)
    assert picked.tolist() == [0, 3]


def test_rules_hold(rec, split):
    users = list(split.users[:20])
    lists = rec.recommend(users, 10)
    train = split.train
    for u, items in zip(users, lists):
        assert len(items) == 10
        clicked = set(train.item_id[(train.user_id == u) & (train.event == 'click')])
        assert not clicked & {e['item_id'] for e in items}, u               # nothing already consumed
        assert pd.Series([e['genre'] for e in items]).value_counts().max() <= rec.config['max_per_genre']
        released = rec.items.release_date.to_numpy()[[e['item_id'] for e in items]] <= rec.trained_at
        assert released.all()
    only = rec.recommend(users[:3], 5, genres=['horror'])
    assert all(e['genre'] == 'horror' for lst in only for e in lst) and all(len(lst) == 5 for lst in only)
    with pytest.raises(ValueError, match=r"unknown genre\(s\) \['jazz'\]"): rec.recommend(users[:1], 5, genres=['jazz'])
    with pytest.raises(ValueError, match='k=0'): rec.recommend(users[:1], 0)
    with pytest.raises(ValueError, match='k=True'): rec.popular(True)


def test_cold_start_user(rec, split):
    known = split.users[0]
    out = rec.recommend(['never-seen', known, 'never-seen'], 8)
    assert [len(x) for x in out] == [8, 8, 8]
    assert {e['source'] for e in out[0]} == {'cold_start'} and out[0] == out[2]
    assert {e['source'] for e in out[1]} <= {'ann', 'covisit', 'popular'}
    pop = rec.popular(5, genres=['drama'])
    assert [e['source'] for e in pop] == ['popular'] * 5 and {e['genre'] for e in pop} == {'drama'}


def test_save_load_round_trip(rec, split, tmp_path):
    users = list(split.users[:5])
    folder = rec.save(tmp_path/'rec')
    back = Recommender.load(folder)
    assert back.recommend(users, 10) == rec.recommend(users, 10)
    assert back.index is not None and back.index.meta['n_items'] == len(rec.items)
    assert json.loads((folder/'index'/'meta.json').read_text())['dim'] == rec.snap.item_vectors.shape[1]


def test_crash_mid_save_keeps_the_old_folder(rec, tmp_path, monkeypatch):
    folder = rec.save(tmp_path/'rec')
    before = sorted(p.name for p in folder.iterdir())
    stamp = (folder/'recommender.pkl').stat().st_mtime_ns

    def boom(self, where): raise OSError('disk full')
    monkeypatch.setattr(ItemIndex, 'save', boom)
    with pytest.raises(OSError, match='disk full'): rec.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert (folder/'recommender.pkl').stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ['rec']                   # no temporary folder left behind
    monkeypatch.undo()
    assert Recommender.load(folder).recommend(['nobody'], 3)[0][0]['source'] == 'cold_start'


def test_mismatched_index_refused(rec, tmp_path):
    folder = rec.save(tmp_path/'rec')
    n, dim = rec.snap.item_vectors.shape
    wrong_dim = ItemIndex.build(np.arange(n), np.random.default_rng(0).normal(size=(n, dim + 4)), n_trees=2)
    wrong_dim.save(tmp_path/'dim')
    with pytest.raises(IndexMismatch, match=f'dimension {dim + 4}.*have {dim}'):
        Recommender.load(folder, tmp_path/'dim')
    fewer = ItemIndex.build(np.arange(n - 3), rec.snap.item_vectors[:-3], n_trees=2)
    fewer.save(tmp_path/'fewer')
    with pytest.raises(IndexMismatch, match=f'holds {n - 3:,} items, the catalogue has {n:,}'):
        Recommender.load(folder, tmp_path/'fewer')


def test_chain_matches_both_baselines(rec, world, split):
    "The notebook's finding on a 28-day world: NDCG@10 a little above popularity's and ALS's, within 0.02; more coverage."
    ours = evaluate_recommender(rec, split)
    base = {name: evaluate(model.fit(split.train, world.items, split.cutoff).recommend(split.users, 10), split,
                           len(world.items)) for name, model in (('popularity', Popularity), ('als', ALS))}
    for b in base.values(): assert 0 < ours['ndcg@10'] - b['ndcg@10'] < 0.02, (ours, base)
    assert ours['coverage'] > base['popularity']['coverage'], (ours, base)
