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


_ENV = None


def _env():
    global _ENV
    if _ENV is None:
        _ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                             extensions=[jinja2.ext.loopcontrols])
        _ENV.filters["tojson"] = _tojson
        _ENV.globals["raise_exception"] = _raise
        _ENV.globals["strftime_now"] = _strftime_now
    return _ENV


_COMPILED = {}


def py_render(source, variables):
    """(text, None) or (None, exception). A template is compiled once and
    rendered many times, as Hugging Face's tokenizers cache it."""
    try:
        if source not in _COMPILED:
            _COMPILED[source] = _env().from_string(source)
        return _COMPILED[source].render(**variables), None
    except Exception as e:  # noqa: BLE001 - any failure of jinja2 is the expectation for lmd
        return None, e


def lmd_render(lmd_bin, tmp_path, source, variables):
    """One render in its own `lmd template` process: (exit status, stdout bytes, stderr)."""
    t = tmp_path / "t.jinja"
    v = tmp_path / "v.json"
    t.write_bytes(source.encode("utf-8"))
    v.write_text(json.dumps(variables))
    p = subprocess.run([lmd_bin, "template", str(t), str(v), "--now", str(NOW)], capture_output=True, timeout=60)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def lmd_batch(lmd_bin, cases, template_file=None):
    """Many renders in one `lmd template --batch` process. cases: (source or
    None for template_file's, variables). Returns one (status, output bytes,
    error text) per case, the error as a single render prints it."""
    args = [lmd_bin, "template"] + ([template_file] if template_file else []) + ["--batch", "-", "--now", str(NOW)]
    lines = []
    for src, variables in cases:
        case = {"vars": variables}
        if src is not None:
            case["template"] = src
        lines.append(json.dumps(case))
    p = subprocess.run(args, input="\n".join(lines).encode("utf-8"), capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
    answers = [json.loads(line) for line in p.stdout.decode("utf-8").splitlines()]
    assert len(answers) == len(cases), (len(answers), len(cases), p.stderr)
    out = []
    for a in answers:
        if a["status"] == 0:
            out.append((0, a["output"].encode("utf-8"), ""))
        else:
            raised = "raise_exception: " if a["status"] == 3 else ""
            out.append((a["status"], b"", f"{template_file or 'case'}:{a['line']}:{a['col']}: {raised}{a['error']}"))
    return out


def check_same(lmd, source, variables, what):
    """lmd: the (exit status, stdout bytes, stderr) of rendering source."""
    want, exc = py_render(source, variables)
    rc, out, err = lmd
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
def test_template_matches_jinja2(lmd_bin, name):
    path = os.path.join(TEMPLATES, name)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    cases = []
    for conv in conversations():
        for agp in (True, False):
            variables = {"messages": conv["messages"], "add_generation_prompt": agp,
                         "bos_token": "<|bos|>", "eos_token": "<|eos|>"}
            if "tools" in conv:
                variables["tools"] = conv["tools"]
            variables.update(conv.get("extra", {}))
            cases.append((f"{name} / {conv['name']} / agp={agp}", variables))
    # Every conversation of this template in one process, the template
    # parsed once as the server parses it.
    rendered = lmd_batch(lmd_bin, [(None, v) for _, v in cases], template_file=path)
    outcomes = {"ok": 0, "error": 0}
    for (what, variables), lmd in zip(cases, rendered):
        outcomes[check_same(lmd, source, variables, what)] += 1
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


@pytest.fixture(scope="module")
def snippets_rendered(lmd_bin):
    return lmd_batch(lmd_bin, [(s, VARS) for s in SNIPPETS])


@pytest.mark.parametrize("i", range(len(SNIPPETS)))
def test_feature_matches_jinja2(snippets_rendered, i):
    outcome = check_same(snippets_rendered[i], SNIPPETS[i], VARS, f"snippet {i}: {SNIPPETS[i]!r}")
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


@pytest.fixture(scope="module")
def malformed_rendered(lmd_bin):
    return lmd_batch(lmd_bin, [(s, VARS) for s in MALFORMED])


@pytest.mark.parametrize("i", range(len(MALFORMED)))
def test_malformed_templates_fail_with_a_position(malformed_rendered, i):
    src = MALFORMED[i]
    rc, out, err = malformed_rendered[i]
    assert rc == 1, f"{src!r}: exit {rc}, out {out!r}, err {err!r}"
    # "case:LINE:COL: message"
    where = err.split("case:", 1)[1]
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


# `lmd template --batch`: many cases in one process, each answered as a
# single render would be.

BATCH_CASES = [
    "{{ u }}|{{ d|tojson }}|{{ strftime_now('%Y-%m-%d') }}",
    "{{ raise_exception('stop at ' ~ n) }}",
    "{% if %}",
    "{{ '\\u0000' }}nul",
    "{% for i in range(100000000) %}{% endfor %}",
]


def test_batch_answers_as_single_renders(lmd_bin, tmp_path):
    batch = lmd_batch(lmd_bin, [(s, VARS) for s in BATCH_CASES])
    statuses = []
    for src, (status, out, err) in zip(BATCH_CASES, batch):
        rc, sout, serr = lmd_render(lmd_bin, tmp_path, src, VARS)
        assert (status, out) == (rc, sout), (src, status, out, rc, sout, serr)
        if rc != 0:
            # The same position and message: "lmd template: t.jinja:L:C: msg".
            assert serr.strip().endswith(err.split(":", 1)[1]), (serr, err)
        statuses.append(status)
    assert statuses == [0, 3, 1, 0, 1]


def test_batch_reads_objects_however_laid_out(lmd_bin, tmp_path):
    # Pretty-printed, several on one line, blank lines between: one answer
    # per object, in order; the template file serves cases without one.
    t = tmp_path / "t.jinja"
    t.write_text("[{{ x }}]")
    stream = ('{\n  "vars": {"x": 1}\n}\n\n{"vars": {"x": "two"}} {"template": "<{{ x }}>", "vars": {"x": 3}}'
              '{"vars": {}}')
    p = subprocess.run([lmd_bin, "template", str(t), "--batch", "-"], input=stream.encode(), capture_output=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert [json.loads(x) for x in p.stdout.decode().splitlines()] == [
        {"status": 0, "output": "[1]"}, {"status": 0, "output": "[two]"}, {"status": 0, "output": "<3>"},
        {"status": 0, "output": "[]"}]


@pytest.mark.parametrize("bad,why", [
    ('[1]', "a case must be a JSON object"),
    ('{"template": 5, "vars": {}}', '"template" must be a string'),
    ('{"template": "x", "vars": []}', '"vars" must be a JSON object'),
    ('{"template": "x"}', '"vars" must be a JSON object'),
    ('{"template": "x", "vars": {}, "now": 1}', 'only "template" and "vars"'),
    ('{"vars": {}}', "no template"),
    ('{"template": "x", "vars": {', "case 2:"),
    ('"just a string"', "case 2:"),
])
def test_batch_stops_at_a_malformed_case(lmd_bin, bad, why):
    stream = '{"template": "ok", "vars": {}}\n' + bad + '\n{"template": "never", "vars": {}}\n'
    p = subprocess.run([lmd_bin, "template", "--batch", "-"], input=stream.encode(), capture_output=True, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 1 and "lmd template: stdin: case 2: " in err and why in err, (p.returncode, err)
    # The case before it was answered; none after it.
    assert p.stdout.decode().splitlines() == ['{"status":0,"output":"ok"}']


def test_batch_usage(lmd_bin, tmp_path):
    h = subprocess.run([lmd_bin, "template", "--help"], capture_output=True, text=True, timeout=60)
    assert h.returncode == 0 and "--batch CASES" in h.stdout
    t = tmp_path / "t.jinja"
    t.write_text("x")
    for args in (["--batch"], [str(t), "vars.json", "--batch", "-"], ["-m", "m.gguf", str(t), "--batch", "-"]):
        p = subprocess.run([lmd_bin, "template", *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "usage: lmd template" in p.stderr, (args, p.returncode, p.stderr)
    p = subprocess.run([lmd_bin, "template", "--batch", str(tmp_path / "missing.jsonl")], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and "cannot read" in p.stderr
