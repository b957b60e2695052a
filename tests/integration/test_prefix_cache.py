"""The prefix cache end to end, on the default model through the official
`openai` client: a prompt sent twice is computed once (the second request
takes the first's full KV blocks, as lmd_prefix_cache_hits_total shows)
and its greedy tokens and log-probabilities are exactly those of the first
and of a server with --no-prefix-cache; tenants do not share cached
prefixes unless --prefix-cache-shared or they are of one prefix_cache_group; a request's cache_salt narrows its
namespace and is validated; /metrics exposes the block size.

Generations are short; the file runs in well under a minute on two cores."""
import httpx
import openai
import pytest

from test_observability import Server, model_id, write_tenants

BLOCK = 16
A, B, C, D = "sk-pc-a", "sk-pc-b", "sk-pc-c", "sk-pc-d"
TENANTS = """\
tenants:
  - name: a
    keys: ["%s"]
  - name: b
    keys: ["%s"]
  - name: c
    keys: ["%s"]
    prefix_cache_group: team
  - name: d
    keys: ["%s"]
    prefix_cache_group: team
  - name: team
    keys: ["sk-pc-team"]
""" % (A, B, C, D)

PROMPT = ("The old lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a lantern, a "
          "notebook and a flask of tea. At the top he lit the great lamp, checked the clockwork that turned it, "
          "and wrote down in a careful hand")


def start(lmd_bin, default_model, d, *extra):
    s = Server(lmd_bin, default_model, d, "--tenants", write_tenants(d / "tenants.yaml", TENANTS),
               "--max-running", "2", *extra)
    s.model = model_id(s.base, A)
    return s


@pytest.fixture(scope="module")
def srv(lmd_bin, default_model, tmp_path_factory):
    s = start(lmd_bin, default_model, tmp_path_factory.mktemp("prefix"))
    yield s
    s.stop()


def complete(s, key, prompt=PROMPT, **extra):
    c = openai.OpenAI(base_url=s.base + "/v1", api_key=key, timeout=60, max_retries=0)
    r = c.completions.create(model=s.model, prompt=prompt, max_tokens=8, temperature=0, logprobs=3,
                             extra_body=dict(ignore_eos=True, **extra))
    ch = r.choices[0]
    return r.usage.prompt_tokens, (ch.text, ch.logprobs.tokens, ch.logprobs.token_logprobs,
                                   ch.logprobs.top_logprobs)


def counters(s):
    m = s.metrics()
    return m.sum("lmd_prefix_cache_queries_total"), m.sum("lmd_prefix_cache_hits_total")


def hit(s, key, want_hit, prompt=PROMPT, **extra):
    q0, h0 = counters(s)
    n, out = complete(s, key, prompt, **extra)
    q1, h1 = counters(s)
    assert q1 - q0 == n
    assert h1 - h0 == ((n - 1) // BLOCK * BLOCK if want_hit else 0)
    return out


def test_same_prompt_twice_hits_and_is_exact(srv):
    first = hit(srv, A, False)
    second = hit(srv, A, True)
    assert first == second
    m = srv.metrics()
    assert m.value("lmd_kv_block_size_tokens") == BLOCK
    assert m.types.get("lmd_kv_block_size_tokens") == "gauge"
    # Finished requests leave their blocks cached, and cached blocks count as free.
    assert m.value("lmd_kv_blocks_free") == m.value("lmd_kv_blocks_capacity")


def test_tenants_are_isolated(srv):
    p = "Tenant isolation: " + PROMPT
    hit(srv, A, False, p)
    hit(srv, B, False, p)  # a's blocks are not b's
    hit(srv, B, True, p)


def test_cache_group(srv):
    """Tenants of one prefix_cache_group share cached prefixes; a tenant
    outside it (even one named like the group) does not."""
    p = "Grouped: " + PROMPT
    hit(srv, C, False, p)
    hit(srv, D, True, p)
    hit(srv, A, False, p)
    hit(srv, "sk-pc-team", False, p)


def test_cache_salt(srv):
    p = "Salted: " + PROMPT
    hit(srv, A, False, p)
    hit(srv, A, False, p, cache_salt="s1")
    hit(srv, A, True, p, cache_salt="s1")
    hit(srv, B, False, p, cache_salt="s1")  # a salt narrows a tenant's namespace; it never joins another's
    for bad in ("", 5, ["s"]):
        r = httpx.post(srv.base + "/v1/completions", headers={"Authorization": "Bearer " + A}, timeout=30,
                       json={"model": srv.model, "prompt": "x", "max_tokens": 1, "cache_salt": bad})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "cache_salt"


def test_shared_and_off(srv, lmd_bin, default_model, tmp_path_factory):
    reference = hit(srv, A, True)
    shared = start(lmd_bin, default_model, tmp_path_factory.mktemp("shared"), "--prefix-cache-shared")
    try:
        assert hit(shared, A, False) == reference
        assert hit(shared, B, True) == reference  # b reuses a's prefix
    finally:
        shared.stop()
    off = start(lmd_bin, default_model, tmp_path_factory.mktemp("off"), "--no-prefix-cache")
    try:
        for _ in range(2):
            n, out = complete(off, A)
            assert out == reference
        assert counters(off) == (0, 0)
    finally:
        off.stop()
