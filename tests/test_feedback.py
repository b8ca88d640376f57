"mlsys.feedback: the closed loop on a tiny world: shapes, the popularity lock-in, exploration's coverage, bad input."
import numpy as np, pandas as pd, pytest

from mlsys.feedback import (ARMS, START, exposure, feedback_experiment, last_round, loop_world, policy_slates, run_loop,
                            warmup_log)
from mlsys.world import SLATE_SIZE

@pytest.fixture(scope='module')
def rounds():
    return feedback_experiment([0, 1], rounds=2, warmup=2, n_users=300, n_items=60)

def test_every_arm_every_round(rounds):
    assert len(rounds) == 2 * len(ARMS) * 2
    assert rounds[['coverage', 'top10_share', 'relevance']].apply(lambda c: c.between(0, 1)).all().all()

def test_popularity_locks_in_and_exploration_widens(rounds):
    pop = rounds[rounds.arm == 'popularity']
    assert (pop.coverage == SLATE_SIZE / 60).all() and (pop.top10_share == 6 / SLATE_SIZE).all()   # 6 of its 10 items
    final = last_round(rounds)
    assert (final['coverage'].values['recommender_explore'] > final['coverage'].values['recommender']).all()
    assert (final['coverage'].values['logging'] > final['coverage'].values['popularity']).all()

def test_start_is_shared_and_left_alone():
    w = loop_world(0, n_users=100, n_items=40)
    start = warmup_log(w, 0, days=2)
    a = run_loop(w, 'recommender', start, 0, rounds=2)
    assert len(start) == 2 and len(a) == 2
    pd.testing.assert_frame_equal(a, run_loop(w, 'recommender', start, 0, rounds=2))   # seeded: the same loop again

def test_bad_input_named():
    w = loop_world(0, n_users=50, n_items=30)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="policy='random'"): policy_slates('random', None, w, START, rng)
    with pytest.raises(ValueError, match='explore=-0.1'): policy_slates('logging', None, w, START, rng, explore=-0.1)
    assert exposure(np.array([[0, 1]]), 10) == {'coverage': 0.2, 'top10_share': 0.5}
