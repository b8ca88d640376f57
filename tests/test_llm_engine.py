"mlsys.llm_serve's engine without HTTP: prefix sharing and chunked prefill give the tokens `generate` gives, under random arrivals, cancellations and a tight KV budget, and every block comes back."
import asyncio
import numpy as np
import pytest
import torch

from mlsys.kv_serving import check_paged
from mlsys.llm import TinyLM, generate
from mlsys.llm_serve import EngineSettingError, LLMEngine, Sequence, check_settings


class NoEOS:
    eos_id = -1
    def decode(self, ids): return ' '.join(map(str, ids))


@pytest.fixture(scope='module')
def toy():
    torch.manual_seed(0)
    return TinyLM(300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=96).eval()


async def _traffic(toy, seed, chunk, share, n_blocks):
    rng = np.random.default_rng(seed)
    systems = [rng.integers(0, 300, int(rng.integers(4, 30))).tolist() for _ in range(2)]
    eng = LLMEngine(toy, NoEOS(), n_blocks, 4, max_batch=int(rng.integers(2, 7)), prefill_chunk=chunk,
                    share_prefix=share)
    seqs, i = [], 0
    while i < 200 and (len(seqs) < 12 or eng.waiting or eng.running):
        if len(seqs) < 12 and rng.random() < 0.4:
            head = systems[rng.integers(2)] if rng.random() < 0.8 else []
            seqs.append(eng.submit(Sequence(head + rng.integers(0, 300, int(rng.integers(1, 12))).tolist(),
                                            int(rng.integers(1, 16)), temperature=0)))
        if eng.running and rng.random() < 0.05: eng.cancel(eng.running[int(rng.integers(len(eng.running)))])
        await eng.step()
        check_paged(eng.paged)
        i += 1
    await eng.stop()
    return eng, seqs


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('chunk,share', [(None, True), (5, True), (3, False)])
def test_engine_tokens_and_blocks(toy, seed, chunk, share):
    eng, seqs = asyncio.run(_traffic(toy, seed, chunk, share, n_blocks=40 if seed % 2 else 24))
    for s in seqs:
        if not s.cancelled: assert s.out == generate(toy, s.prompt, s.max_tokens), (s.prompt, s.out)
    assert eng.paged.alloc.n_used == 0 and eng.paged.alloc.allocated == eng.paged.alloc.released
    assert eng.paged.prefix == {} and eng.paged.written == set()
    if chunk: assert eng.max_step_tokens <= chunk + eng.max_batch


def test_shared_system_prompt_skips_its_blocks(toy):
    "Queued together behind one system prompt: the first computes its blocks, the others skip them."
    system = list(range(100, 141))   # 41 tokens: 10 full blocks of 4
    eng = LLMEngine(toy, NoEOS(), 64, 4, max_batch=4)
    seqs = [eng.submit(Sequence(system + [i, i + 1], 4, temperature=0)) for i in range(4)]
    async def go():
        while eng.waiting or eng.running: await eng.step()
    asyncio.run(go())
    assert eng.prefix_hits == 3 * 40 and eng.prefilled == 43 + 3 * 3
    assert [s.out for s in seqs] == [generate(toy, s.prompt, 4) for s in seqs]


def test_settings_named():
    with pytest.raises(EngineSettingError,
                       match=r'n_blocks=3: the budget of 3 blocks of 16 tokens must hold one full context \(96 tokens'):
        check_settings(96, 3, 16, 8, None)
    for kw, msg in [({'block_size': 0}, 'block_size=0'), ({'max_batch': -1}, 'max_batch=-1'),
                    ({'prefill_chunk': 0}, 'prefill_chunk=0')]:
        args = {'context': 96, 'n_blocks': 64, 'block_size': 4, 'max_batch': 8, 'prefill_chunk': None} | kw
        with pytest.raises(EngineSettingError, match=msg) as e: check_settings(**args)
        assert e.value.field == next(iter(kw))
