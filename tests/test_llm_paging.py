"mlsys.kv_serving: the paged KV allocator's invariants under random traffic, aborts, the budget, waste and batching."
import numpy as np, pandas as pd, pytest

from mlsys.kv_serving import (BlockAllocator, OutOfBlocks, PagedKV, StepCost, Workload, check_paged, concurrency,
                              kv_waste, random_traffic, serve_workload)

@pytest.mark.parametrize('seed', range(20))
def test_random_traffic_never_leaks_or_shares_wrongly(seed):
    rng = np.random.default_rng(seed)
    kv = PagedKV(int(rng.integers(4, 40)), block_size=int(rng.choice([1, 4, 8, 16])))
    counts = random_traffic(kv, 400, seed=seed)          # check_paged after every operation
    assert sum(counts.values()) == 400
    for s in list(kv.tables): kv.abort(s)
    check_paged(kv)
    assert kv.alloc.n_free == kv.alloc.n_blocks and kv.alloc.allocated == kv.alloc.released

def test_shared_blocks_are_never_written_in_place():
    kv = PagedKV(8, block_size=4)
    assert kv.admit('a', 6)
    kv.fork('a', 'b')
    before = list(kv.tables['a'])
    kv.append('b')                                        # 'b' writes slot 6 of a shared, part-full block
    assert kv.tables['a'] == before and kv.tables['b'][0] == before[0] and kv.tables['b'][1] != before[1]
    assert kv.copies == 1 and kv.alloc.refs[before[0]] == 2 and kv.alloc.refs[before[1]] == 1
    kv.append('a', 2)                                     # 'a' now owns its last block alone: no copy
    assert kv.copies == 1
    check_paged(kv)

def test_abort_frees_blocks_and_counters_agree():
    kv = PagedKV(10, block_size=4)
    assert kv.admit('x', 9) and kv.admit('y', 4, prefix_of='x', prefix_len=4)
    assert (kv.alloc.n_used, kv.alloc.allocated) == (3, 3)   # 'y' shares x's first block
    kv.abort('x')
    assert (kv.alloc.n_used, kv.alloc.released) == (1, 2)
    kv.abort('y')
    assert (kv.alloc.n_used, kv.alloc.released) == (0, 3)
    with pytest.raises(KeyError, match="'y' is not admitted"): kv.abort('y')

def test_budget_exhausted_refuses_without_over_allocating():
    kv = PagedKV(5, block_size=4)
    assert kv.admit('a', 12)
    assert not kv.admit('b', 12)                          # 3 blocks asked, 2 free: waits, takes nothing
    assert kv.alloc.n_used == 3 and 'b' not in kv.tables
    assert kv.admit('c', 8)
    with pytest.raises(OutOfBlocks, match='needs 1 block'): kv.append('a', 1)
    assert kv.lengths['a'] == 12 and kv.alloc.n_free == 0
    check_paged(kv)

def test_bad_input_named():
    with pytest.raises(ValueError, match='n_blocks=0'): BlockAllocator(0)
    kv = PagedKV(4, 4)
    with pytest.raises(ValueError, match='n_tokens=0'): kv.admit('a', 0)
    assert kv.admit('a', 3)
    with pytest.raises(ValueError, match="'a' is already admitted"): kv.admit('a', 3)
    with pytest.raises(ValueError, match='prefix_len=5'): kv.admit('b', 8, prefix_of='a', prefix_len=5)
    with pytest.raises(ValueError, match='released twice'): kv.alloc.release(3)
    with pytest.raises(ValueError, match='exceeds the context'): kv_waste([2000], 1024)
    with pytest.raises(ValueError, match="policy='fifo'"): serve_workload(Workload().sample(3), 'fifo', None)

def test_waste_and_concurrency_on_the_stated_workload():
    wl = Workload()
    reqs = wl.sample(3000, seed=7)
    w = kv_waste((reqs.prompt + reqs.output).to_numpy(), wl.context)
    assert 0.6 <= w['contiguous'] <= 0.8 and w['paged'] <= 0.05
    c = concurrency(reqs, 64 * wl.context, wl.context)
    assert c['contiguous'] == 64 and c['paged'] > 2.5 * 64

def test_continuous_batching_beats_static_with_a_fixed_cost_model():
    cost = StepCost(1e-3, 1e-5, 1e-3, 1e-4, 1e-7)       # a step costs mostly its fixed part, like a GPU's decode
    reqs = Workload().sample(200, seed=3)
    s, c = (serve_workload(reqs, p, cost) for p in ('static', 'continuous'))
    assert c['tokens_per_s'] > 2 * s['tokens_per_s'] and c['latency_p50'] < s['latency_p50']
    assert (c['times'].finish >= c['times']['first']).all() and c['preempted'] == 0
    tight = serve_workload(reqs, 'continuous', cost, max_batch=64, kv_blocks=300)   # budget binds: preempts
    assert tight['preempted'] > 0 and np.isfinite(tight['times'].finish).all()

def test_check_paged_catches_a_wrong_share_and_a_leak():
    kv = PagedKV(6, block_size=4)
    assert kv.admit('a', 6)
    kv.fork('a', 'b')
    kv.lengths['b'] += 1                                  # written into the shared block without copying it
    with pytest.raises(AssertionError, match='shared wrongly'): check_paged(kv)
    kv.lengths['b'] -= 1
    kv.alloc.refs[kv.tables['a'][0]] += 1                 # a reference nobody holds
    with pytest.raises(AssertionError, match='3 references, 2 holders'): check_paged(kv)


@pytest.mark.parametrize('seed', range(20))
def test_prefix_table_never_leaks_or_shares_wrongly(seed):
    "Token prompts through the prefix table (shared system prompts, chance matches), mixed with fork/append/abort."
    rng = np.random.default_rng(100 + seed)
    kv = PagedKV(int(rng.integers(4, 40)), block_size=int(rng.choice([1, 2, 4, 8])))
    counts = random_traffic(kv, 400, seed=seed, prompts=True)   # check_paged (prefix entries included) every operation
    assert counts.get('prefix_hit', 0) > 0 or counts.get('refused', 0) > 0
    for s in list(kv.tables): kv.abort(s)
    check_paged(kv)
    assert kv.alloc.n_free == kv.alloc.n_blocks and kv.alloc.allocated == kv.alloc.released
    assert kv.prefix == {} and kv.keys == {} and kv.written == set()


def test_prefix_table_shares_only_equal_prefixes():
    kv = PagedKV(16, block_size=4)
    sys_a, sys_b = [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9]
    assert kv.admit_cached('a', sys_a + [0]) == 0
    assert kv.admit_cached('b', sys_b + [0]) == 4                # first block equal, second not: only the first shared
    assert kv.tables['b'][0] == kv.tables['a'][0] and kv.tables['b'][1] != kv.tables['a'][1]
    assert kv.admit_cached('c', [5, 6, 7, 8] + sys_a) == 0        # the same block at another place is another prefix
    assert kv.admit_cached('d', sys_a) == 4                      # the last token is always left to compute
    kv.abort('a')
    assert kv.admit_cached('e', sys_a + [1]) == 4                # 'a' gone: its second block left the table with it
    check_paged(kv)


def test_prefix_table_hash_collision_is_a_miss():
    "An entry under the right key but holding other tokens (a collision) is not shared."
    from mlsys.kv_serving import _chain
    kv = PagedKV(8, block_size=4)
    assert kv.admit_cached('a', [1, 2, 3, 4, 0]) == 0
    block = kv.tables['a'][0]
    kv.prefix[_chain(None, (9, 9, 9, 9))] = block                # pretend (9, 9, 9, 9) hashed like a's first block
    assert kv.admit_cached('b', [9, 9, 9, 9, 0]) == 0 and kv.tables['b'][0] != block


def test_check_paged_catches_a_wrong_prefix_share():
    kv = PagedKV(8, block_size=4)
    assert kv.admit_cached('a', [1, 2, 3, 4, 0]) == 0
    assert kv.admit_cached('b', [5, 6, 7, 8, 0]) == 0
    own, a0 = kv.tables['b'][0], kv.tables['a'][0]
    kv.tables['b'][0] = a0                                       # b pointed at a's block by mistake, counts kept right
    kv.alloc.share(a0)
    kv._release(own)
    with pytest.raises(AssertionError, match=f'block {a0} shared wrongly'): check_paged(kv)
