"""lmd's Jinja engine against Python's jinja2, byte for byte.

Every chat template under tests/data/templates is rendered over every
conversation of tests/data/chat_conversations.json, with and without the
generation prompt, by `lmd template` and by jinja2 set up the way Hugging
Face renders chat templates (ImmutableSandboxedEnvironment, trim_blocks,
lstrip_blocks, loopcontrols, tojson as json.dumps with ensure_ascii=False,
raise_exception, strftime_now). The outputs must be equal; where jinja2
fails, lmd must fail too (with status 3 where the template raised).

A second table of small templates pins the semantics of single features
(slicing, filters, tests, loops, scoping, whitespace control) the same way,
and malformed templates must fail with a line and column, never crash.
"""
import datetime
import json
import os
import subprocess

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATES = os.path.join(ROOT, "tests", "data", "templates")
CONVERSATIONS = os.path.join(ROOT, "tests", "data", "chat_conversations.json")
NOW = 1700000000  # 2023-11-14 22:13:20 UTC: strftime_now() in both renderers


class Raised(Exception):
    pass


def _raise(msg):
    raise Raised(msg)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.datetime.fromtimestamp(NOW, tz=datetime.timezone.utc).strftime(fmt)


def _env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env


def py_render(source, variables):
    """(text, None) or (None, exception)."""
    try:
        return _env().from_string(source).render(**variables), None
    except Exception as e:  # noqa: BLE001 - any failure of jinja2 is the expectation for lmd
        return None, e


def lmd_render(lmd_bin, tmp_path, source, variables):
    t = tmp_path / "t.jinja"
    v = tmp_path / "v.json"
    t.write_bytes(source.encode("utf-8"))
    v.write_text(json.dumps(variables))
    p = subprocess.run([lmd_bin, "template", str(t), str(v), "--now", str(NOW)], capture_output=True, timeout=60)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def check_same(lmd_bin, tmp_path, source, variables, what):
    want, exc = py_render(source, variables)
    rc, out, err = lmd_render(lmd_bin, tmp_path, source, variables)
    if exc is not None:
        assert rc != 0, f"{what}: jinja2 failed ({type(exc).__name__}: {exc}) but lmd rendered {out!r}"
        assert rc in (1, 3), f"{what}: lmd exit status {rc}: {err}"
        if isinstance(exc, Raised):
            assert rc == 3 and str(exc) in err, f"{what}: jinja2 raised {exc!r}, lmd said {err!r}"
        return "error"
    assert rc == 0, f"{what}: jinja2 rendered {want!r} but lmd failed: {err}"
    assert out == want.encode("utf-8"), f"{what}:\n--- jinja2\n{want!r}\n--- lmd\n{out.decode('utf-8', 'replace')!r}"
    return "ok"


def template_files():
    return sorted(f for f in os.listdir(TEMPLATES) if f.endswith(".jinja"))


def conversations():
    with open(CONVERSATIONS, encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("name", template_files())
def test_template_matches_jinja2(lmd_bin, tmp_path, name):
    with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
        source = f.read()
    outcomes = {"ok": 0, "error": 0}
    for conv in conversations():
        for agp in (True, False):
            variables = {"messages": conv["messages"], "add_generation_prompt": agp,
                         "bos_token": "<|bos|>", "eos_token": "<|eos|>"}
            if "tools" in conv:
                variables["tools"] = conv["tools"]
            variables.update(conv.get("extra", {}))
            outcomes[check_same(lmd_bin, tmp_path, source, variables, f"{name} / {conv['name']} / agp={agp}")] += 1
    # Most conversations render; the ones a template refuses (alternation,
    # content parts it cannot add to a string, an empty list) fail in both.
    assert outcomes["ok"] >= 16, outcomes


VARS = {
    "s": "  Hello, World  ",
    "u": "héllo wörld 😀",
    "n": 7,
    "f": 2.5,
    "xs": [3, 1, 2],
    "d": {"b": 1, "a": [1, {"k": None}], "c": "x"},
    "msgs": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
             {"role": "user", "content": "bye", "extra": True}],
    "t": True,
    "none": None,
    "floats": [0.1, 1e-05, 1e16, 123456789.0, -0.0, 3.0, 1.5e-7, 2.0 ** 60],
}

SNIPPETS = [
    "{{ s }}|{{ s|trim }}|{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.strip(' H') }}",
    "{{ s|length }} {{ u|length }} {{ xs|length }} {{ d|length }} {{ missing|length }}",
    "{{ u[0] }}{{ u[-1] }}{{ u[1:4] }}{{ u[::-1] }}{{ u[::2] }}{{ xs[::-1] }}{{ xs[1:] }}{{ xs[:-1] }}{{ xs[5:] }}",
    "{{ xs[-1] }} {{ xs[10] }} {{ d['a'][1]['k'] }} {{ d.a[1].k }} {{ d.c }} {{ d['zz'] }}",
    "{{ d }} {{ xs }} {{ msgs[0] }} {{ none }} {{ t }} {{ f }} {{ n / 2 }} {{ n // 2 }} {{ -n % 3 }} {{ n ** 2 }}",
    "{{ floats }}{% for x in floats %} {{ x }}{% endfor %}",
    "{{ d|tojson }} {{ xs|tojson }} {{ u|tojson }} {{ floats|tojson }} {{ none|tojson }} {{ t|tojson }}",
    "{{ d|tojson(indent=2) }}{{ [] |tojson(indent=2) }}{{ {}|tojson(indent=4) }}",
    "{{ d|tojson(sort_keys=true) }} {{ d|tojson(separators=(',', ':')) }} {{ 'a\"b\\\\c\\n\\t\\u0001'|tojson }}",
    "{{ 'abc' ~ 1 ~ none ~ t }} {{ 'a' + 'b' }} {{ xs + [4] }} {{ 'ab' * 3 }} {{ missing ~ 'x' }}",
    "{% for m in msgs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }}/"
    "{{ loop.revindex }}:{{ m.role }};{% endfor %}",
    "{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}|{% for k in d %}{{ k }}{% endfor %}|"
    "{% for k, v in d|items %}{{ k }}{% endfor %}|{{ d.keys()|list }}{{ d.values()|list }}",
    "{% for x in xs if x > 1 %}{{ x }}{{ loop.length }}{% else %}none{% endfor %}{% for x in [] %}a{% else %}empty{% endfor %}",
    "{% for x in xs %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "{% set ns = namespace(total=0, seen=[]) %}{% for x in xs %}{% set ns.total = ns.total + x %}"
    "{% set ns.seen = ns.seen + [x] %}{% endfor %}{{ ns.total }} {{ ns.seen }}",
    "{% set y = 1 %}{% for x in xs %}{% set y = x %}{% endfor %}{{ y }}",
    "{% if n > 5 and not t is false %}big{% elif n > 2 %}mid{% else %}small{% endif %}",
    "{{ 'yes' if t else 'no' }} {{ 'yes' if none else 'no' }} {{ ('a' if false) }}|{{ n if n > 100 }}|",
    "{{ s is string }} {{ n is number }} {{ f is float }} {{ n is integer }} {{ t is boolean }} {{ d is mapping }} "
    "{{ xs is sequence }} {{ s is iterable }} {{ none is none }} {{ missing is defined }} {{ missing is undefined }} "
    "{{ n is odd }} {{ n is even }} {{ n is divisibleby 7 }} {{ 'a' is in 'cat' }} {{ 1 is in xs }} {{ n is eq 7 }}",
    "{{ 'a' in 'cat' }} {{ 'z' not in 'cat' }} {{ 1 in xs }} {{ 'a' in d }} {{ 'q' in d }} {{ 'x' in missing }}",
    "{{ msgs|selectattr('role', 'equalto', 'user')|list|length }} {{ msgs|rejectattr('role', 'equalto', 'user')|list }} "
    "{{ msgs|selectattr('extra')|map(attribute='content')|list }} {{ msgs|map(attribute='role')|join(', ') }}",
    "{{ xs|join('-') }} {{ xs|first }} {{ xs|last }} {{ xs|reverse|list }} {{ 'abc'|reverse }} {{ xs|select('odd')|list }}",
    "{{ s|upper }} {{ s|lower }} {{ 'hello world'|title }} {{ 'hELLO'|capitalize }} {{ s|replace('l', 'L') }} "
    "{{ s.replace('o', '0', 1) }} {{ 'ab'|replace('', '-') }}",
    "{{ 'a,b,,c'.split(',') }} {{ '  a  b c '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'x'.startswith('x') }} "
    "{{ 'xyz'.endswith(('q', 'z')) }} {{ 'Hi There'.lower() }} {{ 'hi'.upper() }} {{ ', '.join(['a', 'b']) }}",
    "{{ d.get('c') }} {{ d.get('zz') }} {{ d.get('zz', 5) }} {{ missing|default('dflt') }} {{ ''|default('e', true) }} "
    "{{ none|default('n') }} {{ xs|string }} {{ n|string ~ 'x' }} {{ '42'|int + 1 }} {{ 'x'|int }} {{ '2.5'|float }}",
    "{{ range(3)|list }} {{ range(1, 10, 3)|list }} {{ range(5, 0, -2)|list }} {{ xs|count }} {{ [1, 2] == [1, 2] }} "
    "{{ {'a': 1} == {'a': 1.0} }} {{ 1 == 1.0 }} {{ 1 == true }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }}",
    "{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Ann') }} "
    "{{ greet('Bob', greeting='Hi') }} {{ greet(name='Cy') }}",
    "{% set block %}inside {{ n }}{% endset %}[{{ block }}]{% set a, b = [1, 2] %}{{ a }}{{ b }}{% set tup = 1, 2 %}{{ tup }}",
    "line1\n  {% if t %}\n    indented\n  {% endif %}\nline2\n{# comment #}\n  {#- trimmed -#}  \nend",
    "a  {{- ' b ' -}}  c\n{%- if t %}  d  {% endif -%}\n  e {%+ if t %}f{% endif %}\n  {% if t +%}\ng{% endif %}",
    "{% for m in msgs %}\n  {{ m.role }}\n{% endfor %}\n",
    "{{ u.split('ö') }} {{ u.find('w') }} {{ u.count('l') }} {{ u|upper }} {{ 'é' < 'z' }} {{ msgs[0].content.title() }}",
    "{{ \"it's\" }} {{ ['it\\'s', 'say \"hi\"', 'both \\' \"', '\\n'] }} {{ ('solo',) }} {{ (1, 'a') }}",
    "{% raw_not_a_tag %}",
    "{{ missing.attr }}",
    "{{ xs + 'a' }}",
    "{{ d|items|list }} {{ d.items()|list }}",
    "{{ 10 / 0 }}",
    "{{ raise_exception('custom failure: ' ~ n) }}",
    "{{ [1, 2, 3]|sum }}",
    "{{ ['b', 'A', 'c']|sort }} {{ ['b', 'A', 'c']|sort(case_sensitive=true) }} {{ xs|sort(reverse=true) }} "
    "{{ msgs|sort(attribute='role')|map(attribute='content')|list }}",
    "{{ [1, 'a']|sort }}",
    "{{ d|dictsort }} {{ {'b': 2, 'A': 3, 'c': 1}|dictsort(by='value') }} {{ {'b': 2, 'a': 1}|dictsort(reverse=true) }}"
    "{% for k, v in {'y': 1, 'x': 2}|dictsort %}{{ k }}{{ v }}{% endfor %}",
    "{{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 0.125|round(2) }} {{ 7|round }} {{ 2.4|round(0, 'ceil') }} "
    "{{ 2.6|round(method='floor') }} {{ -2.5|round }} {{ 1234.5|round(-2) }}",
]


# The snippets that fail in jinja2 (and so must in lmd): found by what they
# contain, so that adding a snippet does not renumber them.
FAILING = {i for i, s in enumerate(SNIPPETS) if s in (
    "{% raw_not_a_tag %}", "{{ missing.attr }}", "{{ xs + 'a' }}", "{{ 10 / 0 }}",
    "{{ raise_exception('custom failure: ' ~ n) }}", "{{ [1, 'a']|sort }}")}


@pytest.mark.parametrize("i", range(len(SNIPPETS)))
def test_feature_matches_jinja2(lmd_bin, tmp_path, i):
    outcome = check_same(lmd_bin, tmp_path, SNIPPETS[i], VARS, f"snippet {i}: {SNIPPETS[i]!r}")
    # Snippets that should fail are the ones named here; the rest must render.
    assert (outcome == "error") == (i in FAILING), f"snippet {i}: {outcome}"


MALFORMED = [
    "{% if x %}never closed",
    "{% for x in %}{% endfor %}",
    "{{ x",
    "{{ x + }}",
    "{% endif %}",
    "{% if x %}{% endfor %}",
    "{{ 'unterminated }}",
    "{# unterminated comment",
    "{{ x |}}",
    "{{ (1, 2 }}",
    "{% set %}",
    "{% macro m(a=1, b) %}{% endmacro %}",
    "{{ x.}}",
    "{% break %}",
    "{{ x[1:2:3:4] }}",
    "{{ '\\x4' }}",
    "{{ a is }}",
    "{%- for x in y -%}{{ x }}{%- endfor",
    "\x00{{ \x01 }}",
    "{{" + "(" * 300 + "1" + ")" * 300 + "}}",
    "{% if a %}" * 300 + "x" + "{% endif %}" * 300,
]


@pytest.mark.parametrize("i", range(len(MALFORMED)))
def test_malformed_templates_fail_with_a_position(lmd_bin, tmp_path, i):
    src = MALFORMED[i]
    rc, out, err = lmd_render(lmd_bin, tmp_path, src, VARS)
    assert rc == 1, f"{src!r}: exit {rc}, out {out!r}, err {err!r}"
    # "lmd template: PATH:LINE:COL: message"
    where = err.split("t.jinja:", 1)[1]
    line, col = where.split(":")[:2]
    assert int(line) >= 1 and int(col) >= 1, err
    _, exc = py_render(src, VARS)
    assert exc is not None, f"{src!r}: jinja2 renders it, lmd refuses: {err}"


def test_integers_past_64_bits_are_refused(lmd_bin, tmp_path):
    # Python's integers are unbounded; lmd's are 64-bit and says so.
    rc, out, err = lmd_render(lmd_bin, tmp_path, "{{ 99999999999999999999 }}", VARS)
    assert rc == 1 and "1:4: integer literal out of range" in err, err


def test_limits_stop_runaway_templates(lmd_bin, tmp_path):
    for src in ["{% for i in range(100000000) %}{% endfor %}",
                "{% for i in range(9000) %}{% for j in range(9000) %}{% endfor %}{% endfor %}",
                "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}",
                "{{ 'x' * 100000000 }}"]:
        rc, out, err = lmd_render(lmd_bin, tmp_path, src, VARS)
        assert rc == 1 and err, (src, rc, err)
