"mlsys.llm, mlsys.llm_tune: KV cache with GQA, generation, tokenizer, training, registry, INT8 and 4-bit, LoRA."
import copy, math
import pytest, torch

from mlsys.llm import (BPETokenizer, KVCache, TinyLM, attention_flops, generate, parameter_shares, register_lm,
                       seed_text, train_lm)
from mlsys.kv_serving import PagedKVCache, SeqView
from mlsys.llm_tune import LoRALinear, add_lora, quantize_lm, train_memory

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return TinyLM(300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=128).eval()

def test_cache_gives_the_same_logits_with_grouped_query_attention(tiny):
    x = torch.randint(0, 300, (2, 20))
    cache = tiny.new_cache(2, 20)
    with torch.no_grad():
        steps = torch.cat([tiny(x[:, :7], cache), tiny(x[:, 7:8], cache), tiny(x[:, 8:], cache)], 1)
        torch.testing.assert_close(steps, tiny(x), atol=1e-5, rtol=1e-4)
    assert cache.k.shape == (2, 2, 2, 20, 8)           # layers, batch, 2 kv heads (not 4), positions, head dim
    with pytest.raises(ValueError, match='KV cache full'): tiny(x[:, :1], cache)

def test_generation_same_tokens_with_without_and_paged_cache(tiny):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    want = generate(tiny, prompt, 20, use_cache=False)
    assert generate(tiny, prompt, 20) == want
    paged = PagedKVCache(tiny, n_blocks=16, block_size=4)
    assert paged.admit('s', len(prompt))
    assert generate(tiny, prompt, 20, cache=paged.view('s')) == want
    assert paged.lengths['s'] == len(prompt) + 19 and len(paged.tables['s']) == 7
    assert paged.admit('t', len(prompt), prefix_of='s', prefix_len=4)   # the shared block: its prefill skipped
    assert generate(tiny, prompt, 20, cache=SeqView(paged, 't', length=4)) == want
    assert paged.tables['t'][0] == paged.tables['s'][0] and paged.tables['t'][1] != paged.tables['s'][1]
    with pytest.raises(ValueError, match='leave at least one'):
        generate(tiny, prompt, 2, cache=SeqView(paged, 's', length=len(prompt)))
    sampled = generate(tiny, prompt, 10, temperature=1.0, seed=1)
    assert sampled == generate(tiny, prompt, 10, temperature=1.0, seed=1, use_cache=False)
    with pytest.raises(ValueError, match='max_new=0'): generate(tiny, prompt, 0)

def test_parameter_shares_and_quadratic_attention():
    mha = parameter_shares(TinyLM(1000, d_model=64, n_heads=4))
    gqa = parameter_shares(TinyLM(1000, d_model=64, n_heads=4, n_kv_heads=1))
    assert mha['ff_share_of_blocks'] == pytest.approx(2 / 3, abs=0.01) and gqa['ff_share_of_blocks'] > 0.75
    fl = attention_flops(TinyLM(100, d_model=32, n_heads=2), (64, 256))
    assert fl.attention_core[256] == 16 * fl.attention_core[64]
    with pytest.raises(ValueError, match='n_kv_heads=3'): TinyLM(100, n_heads=4, n_kv_heads=3)

def test_train_register_load_round_trip(tmp_path):
    from mlsys.registry import Registry
    text = seed_text()[:40_000]
    run = train_lm(text, vocab_size=400, steps=4, block=32, batch_size=4, d_model=32, n_heads=2)
    assert run.tok.vocab_size == 400 and math.isfinite(run.val_loss)
    reg = Registry(tmp_path/'models')
    v = register_lm(reg, run)
    assert reg.verify('tiny-lm', v) == []
    model, tok, row = reg.load('tiny-lm', v)
    assert {'weights.safetensors', 'preprocessor.json', 'model.json'} <= {p.name for p in row['path'].iterdir()}
    ids = tok.encode('Quantization first.')
    assert tok.decode(ids) == 'Quantization first.'
    assert generate(model, ids, 5) == generate(run.model, ids, 5)

def test_tokenizer_bad_input():
    with pytest.raises(ValueError, match='vocab_size=10'): BPETokenizer.train('abc', vocab_size=10)
    with pytest.raises(FileNotFoundError, match='MLSYS_GUIDE'): seed_text('/no/such/file.txt')

def test_int8_close_and_smaller_lora_starts_at_base(tiny):
    x = torch.randint(0, 300, (1, 16))
    q8, q4 = quantize_lm(tiny, 8), quantize_lm(tiny, 4)
    with torch.no_grad():
        ref = tiny(x).log_softmax(-1)
        err8, err4 = ((m(x).log_softmax(-1) - ref).abs().mean() for m in (q8, q4))
    assert err8 < 0.01 and err8 < err4
    lora = add_lora(tiny, r=4)
    mem, full = train_memory(lora), train_memory(tiny)
    assert mem['trainable'] == sum(p.numel() for b in lora.blocks for t in ('q', 'kv', 'o')
                                   for p in (getattr(b.attn, t).A, getattr(b.attn, t).B))
    assert mem['bytes'] < full['bytes'] / 2
    with torch.no_grad(): torch.testing.assert_close(lora(x), tiny(x))
    layer = LoRALinear(torch.nn.Linear(8, 8), r=2)
    torch.nn.init.normal_(layer.B)
    inp = torch.randn(3, 8)
    with torch.no_grad(): torch.testing.assert_close(layer.merged()(inp), layer(inp), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match='bits=3'): quantize_lm(tiny, 3)


def test_fused_forward_same_logits_and_tokens(tiny):
    "`fused_forward` is `TinyLM.forward` with fewer operations: the same logits (cached, uncached, paged), the same tokens."
    from mlsys.llm import fuse, fused_forward
    x, layers = torch.randint(0, 300, (2, 20)), fuse(tiny)
    with torch.inference_mode():
        c1, c2 = tiny.new_cache(2, 20), tiny.new_cache(2, 20)
        for a, b in [(0, 7), (7, 8), (8, 20)]:                  # a prefill, one token, a chunk after a cached prefix
            torch.testing.assert_close(fused_forward(tiny, layers, x[:, a:b], c1), tiny(x[:, a:b], c2, last_only=True),
                                       atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fused_forward(tiny, layers, x), tiny(x, last_only=True), atol=1e-5, rtol=1e-4)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    want = generate(tiny, prompt, 30, fused=False)
    assert generate(tiny, prompt, 30) == generate(tiny, prompt, 30, use_cache=False) == want
    paged = PagedKVCache(tiny, n_blocks=16, block_size=4)
    assert paged.admit('s', len(prompt))
    assert generate(tiny, prompt, 30, cache=paged.view('s')) == want
    assert generate(tiny, prompt, 10, temperature=1.0, seed=3) == generate(tiny, prompt, 10, temperature=1.0, seed=3,
                                                                          fused=False)


def test_fused_falls_back_for_swapped_layers(tiny):
    "LoRA or quantized layers are not plain `nn.Linear`: `fuse` says so and `generate` runs the modules."
    from mlsys.llm import fuse
    for m in (add_lora(tiny), quantize_lm(tiny, 8)):
        assert fuse(m) is None
        assert generate(m, [1, 2, 3], 5) == generate(m, [1, 2, 3], 5, fused=False)


def test_decode_profile_counts(tiny):
    from mlsys.llm import decode_profile
    p = {f: decode_profile(tiny, 32, fused=f) for f in (False, True)}
    assert p[True]['python_calls_per_token'] < 0.6 * p[False]['python_calls_per_token'], p
    assert p[True]['ops_per_token'] < p[False]['ops_per_token'] and len(p[True]['top']) == 8
