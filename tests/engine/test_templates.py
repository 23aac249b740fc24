"""The template engine: native values, text, sandboxing, limits, compile checks, caching."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.engine.templates import TemplateEngine, TemplateError, has_template, iter_templates

SCOPE: dict[str, Any] = {
    "inputs": {"amount": 150, "name": "Ada"},
    "state": {
        "n": 1,
        "flag": True,
        "none": None,
        "ratio": 0.5,
        "list": [1, 2, 3],
        "obj": {"a": {"b": "deep"}},
        "looks_like_template": "{{ 7 * 6 }}",
        "looks_like_statement": "{% for x in y %}",
        "looks_like_list": "[1,2]",
        "looks_like_number": "42",
    },
    "nodes": {"fetch": {"output": {"body": {"items": [{"id": 1}, {"id": 2}], "keys": "k"}}}},
    "context": {},
}

GENEROUS_S = 5.0  # sanity bound only; the limits themselves trip in milliseconds


@pytest.fixture(scope="module")
def engine() -> TemplateEngine:
    return TemplateEngine()


def fails(
    engine: TemplateEngine, source: str, scope: dict[str, Any] | None = None
) -> TemplateError:
    started = time.monotonic()
    with pytest.raises(TemplateError) as info:
        engine.render(source, SCOPE if scope is None else scope)
    assert time.monotonic() - started < GENEROUS_S
    assert info.value.expression == source
    return info.value


# --------------------------------------------------------------------------- native values


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ state.n + 1 }}", 2),
        ("{{ inputs.amount > 100 }}", True),
        ("{{ state.flag and inputs.amount < 100 }}", False),
        ("{{ state.none }}", None),
        ("{{ state.ratio * 2 }}", 1.0),
        ("{{ state.list }}", [1, 2, 3]),
        ("{{ state.obj }}", {"a": {"b": "deep"}}),
        ("{{ {'x': state.n, 'y': [state.flag]} }}", {"x": 1, "y": [True]}),
        ("{{ state['obj']['a'].b }}", "deep"),
        ("{{ inputs.name }}", "Ada"),
        ("{{- state.n -}}", 1),
        ("{{state.n}}", 1),
        ("{{ state.n }}{# a comment #}", 1),
        ("{{ '}}' }}", "}}"),
        ("{{ 2 ** -1 }}", 0.5),
    ],
)
def test_whole_string_expression_yields_native_value(
    engine: TemplateEngine, source: str, expected: Any
) -> None:
    result = engine.render(source, SCOPE)
    assert result == expected
    assert type(result) is type(expected)


def test_native_results_are_json_shaped(engine: TemplateEngine) -> None:
    assert engine.render("{{ (1, 2) }}", SCOPE) == [1, 2]
    assert engine.render("{{ range(3) }}", SCOPE) == [0, 1, 2]
    assert engine.render("{{ state.list | map('string') }}", SCOPE) == ["1", "2", "3"]
    assert engine.render("{{ state.list | reverse }}", SCOPE) == [3, 2, 1]
    assert engine.render("{{ {'a': (1, 2)}.items() }}", SCOPE) == [["a", [1, 2]]]
    assert engine.render("{{ namespace(a=1) }}", SCOPE) == {"a": 1}
    result = engine.render("{{ 'x' | e }}", SCOPE)
    assert result == "x"
    assert type(result) is str  # not Markup


def test_callable_result_is_an_error(engine: TemplateEngine) -> None:
    error = fails(engine, "{{ state.get }}")
    assert "callable" in error.message


def test_object_keys_become_json_text_or_an_error(engine: TemplateEngine) -> None:
    assert engine.render("{{ {2: 'a', true: 'b', none: 'c', 1.5: 'd'} }}", SCOPE) == {
        "2": "a", "true": "b", "null": "c", "1.5": "d"}  # fmt: skip
    assert engine.render("{{ [{2: {3: 4}}] }}", SCOPE) == [{"2": {"3": 4}}]
    error = fails(engine, "{{ {(1, 2): 'pair'} }}")
    assert "object key (1, 2)" in error.message


@pytest.mark.parametrize(
    ("source", "kind"),
    [("{{ self }}", "TemplateReference"), ("{{ cycler(1, 2) }}", "Cycler"),
     ("{{ [1, cycler(1)] }}", "Cycler")],
)  # fmt: skip
def test_an_object_that_is_no_json_value_is_an_error(
    engine: TemplateEngine, source: str, kind: str
) -> None:
    error = fails(engine, source)
    assert f"{kind!r}, which is not a JSON value" in error.message


@pytest.mark.parametrize(
    "source", ["{{ 1e308 * 10 }}", "{{ -1e308 * 10 }}", "{{ [1e308 * 10 - 1e308 * 10] }}",
               "{{ {'a': (1e308 * 10) | float} }}"],
)  # fmt: skip
def test_a_result_json_cannot_hold_is_an_error(engine: TemplateEngine, source: str) -> None:
    """Not stored as null behind the template's back."""
    assert "JSON has no word for" in fails(engine, source).message


def test_dict_attribute_prefers_keys_over_methods(engine: TemplateEngine) -> None:
    body = "nodes.fetch.output.body"
    assert engine.render("{{ " + body + ".items }}", SCOPE) == [{"id": 1}, {"id": 2}]
    assert engine.render("{{ " + body + ".keys }}", SCOPE) == "k"
    assert engine.render("{{ state.obj.items() | list }}", SCOPE) == [["a", {"b": "deep"}]]


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Hello {{ inputs.name }}!", "Hello Ada!"),
        ("{{ state.n }} + {{ state.n }}", "1 + 1"),
        (" {{ state.n }}", " 1"),
        ("{{ state.n }}\n", "1\n"),  # trailing newline kept
        ("x={{ state.none }}", "x=None"),  # Jinja's default rendering of None
        ("{{ state.list }}!", "[1, 2, 3]!"),
        ("{% for i in state.list %}{{ i }}{% if not loop.last %},{% endif %}{% endfor %}", "1,2,3"),
        ("{% if state.flag %}yes{% else %}no{% endif %}", "yes"),
        ("{% raw %}{{ state.n }}{% endraw %}", "{{ state.n }}"),
        ("{{ 'a' ~ state.n ~ state.list }}-", "a1[1, 2, 3]-"),
        ("{{ '{:>4}|%03d'.format(7) % 5 }}", "   7|005"),
        ("{{ state.list | join(', ') }}.", "1, 2, 3."),
        ("{{ state.obj | tojson }}", '{"a": {"b": "deep"}}'),
        (
            "{% set ns = namespace(t=0) %}{% for i in range(4) %}{% set ns.t = ns.t + i %}"
            "{% endfor %}{{ ns.t }}",
            "6",
        ),
    ],
)
def test_mixed_strings_render_to_text(engine: TemplateEngine, source: str, expected: str) -> None:
    assert engine.render(source, SCOPE) == expected


def test_nested_values_are_rendered_keys_and_non_strings_untouched(engine: TemplateEngine) -> None:
    value = {
        "{{ state.n }}": "{{ state.n }}",
        "url": "https://x/{{ inputs.name }}",
        "json": {"amount": "{{ inputs.amount }}", "list": [1, "{{ state.flag }}", None, 2.5]},
        "plain": "no markers",
        "number": 7,
        "tuple": ("{{ state.n }}", "x"),
    }
    assert engine.render(value, SCOPE) == {
        "{{ state.n }}": 1,
        "url": "https://x/Ada",
        "json": {"amount": 150, "list": [1, True, None, 2.5]},
        "plain": "no markers",
        "number": 7,
        "tuple": (1, "x"),
    }
    assert engine.render(value, SCOPE) is not value
    assert engine.render(42, SCOPE) == 42
    assert engine.render(None, SCOPE) is None


def test_strings_without_markers_are_returned_as_is(engine: TemplateEngine) -> None:
    for text in ["plain", "", "{# not a template #}", "a } b { c", "{ {x} }"]:
        assert engine.render(text, SCOPE) is text
    inner = "still plain"
    assert engine.render({"a": [inner]}, SCOPE)["a"][0] is inner


@pytest.mark.parametrize(
    "key", ["looks_like_template", "looks_like_statement", "looks_like_list", "looks_like_number"]
)
def test_data_is_never_re_evaluated(engine: TemplateEngine, key: str) -> None:
    raw = SCOPE["state"][key]
    assert engine.render("{{ state." + key + " }}", SCOPE) == raw
    assert engine.render("<{{ state." + key + " }}>", SCOPE) == f"<{raw}>"
    assert engine.evaluate(f"state.{key}", SCOPE) == raw


def test_scope_is_not_mutated(engine: TemplateEngine) -> None:
    scope = {"state": {"list": [1]}}
    fails(engine, "{{ state.list.append(2) }}", scope)
    engine.render("{% set x = 5 %}{{ x }}", scope)
    assert scope == {"state": {"list": [1]}}


# --------------------------------------------------------------------------- errors


def test_undefined_names_are_errors(engine: TemplateEngine) -> None:
    error = fails(engine, "{{ stat.n }}")
    assert error.message == "'stat' is undefined"
    assert error.expression == "{{ stat.n }}"
    assert "stat.n" in str(error)
    fails(engine, "{{ state.list[10] }}")  # an index a list does not have
    assert "has no attribute 'x'" in fails(engine, "{{ state.n.x }}").message


def test_a_missing_key_is_null(engine: TemplateEngine) -> None:
    """A key an object does not have (``state.refund_id`` on a path that never set it)."""
    pair = "{{ {'refund_id': state.refund_id, 'flag': state.flag} }}"
    assert engine.render(pair, SCOPE) == {"refund_id": None, "flag": True}
    assert engine.render("{{ state.missing }}", SCOPE) is None
    assert engine.render("{{ state['missing'] }}", SCOPE) is None
    assert engine.render("{{ [state.missing, 1] }}", SCOPE) == [None, 1]
    assert engine.render("a{{ state.missing }}b", SCOPE) == "ab"
    assert engine.render("{{ state.missing is defined }}", SCOPE) is False
    assert engine.render("{{ state.missing | default('d') }}", SCOPE) == "d"
    assert engine.render("{{ state.missing == none and state.missing is none }}", SCOPE) is True
    assert engine.evaluate("state.missing", SCOPE) is None
    assert engine.evaluate("not state.missing", SCOPE) is True
    # anything else done with it is an error naming it
    for expression in (
        "{{ state.missing + 1 }}",
        "{{ state.missing < 2 }}",
        "{{ state.missing.deeper }}",
        "{% for x in state.missing %}{% endfor %}",
        "{{ state.missing | length }}",
    ):
        assert "has no attribute 'missing'" in fails(engine, expression).message, expression


def test_error_path_points_into_the_value(engine: TemplateEngine) -> None:
    with pytest.raises(TemplateError) as info:
        engine.render({"json": {"items": [1, "{{ nope }}"]}}, SCOPE)
    assert info.value.path == ["json", "items", 1]
    assert info.value.expression == "{{ nope }}"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 1 / 0 }}",
        "{{ 1 + 'a' }}",
        "{{ state.n() }}",
        "{{ 2.0 ** 100000 }}",
        "{{ 'abc'.index('z') }}",
        "{{ '{' .format(1) }}",
        "{{ '%d' % 'x' }}",
        "{% include 'other' %}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{{ [1, 2] | sum(start='') }}",
        "{{ 1 + }}",
        "{{ state.n | no_such_filter }}",
        "{% for %}",
    ],
)
def test_every_failure_is_a_template_error(engine: TemplateEngine, source: str) -> None:
    error = fails(engine, source)
    assert error.message


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ state.__init__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ state.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ state.list.append(4) }}",
        "{{ state.obj.update({'x': 1}) }}",
        "{{ state.obj.pop('a') }}",
        "{{ '{0.__class__}'.format('') }}",
        "{{ (state.n).__class__ }}",
        "{{ lipsum() }}",
        "{{ range.__self__ }}",
        "{{ self.__dict__ }}",
    ],
)
def test_sandbox_escapes_are_refused(engine: TemplateEngine, source: str) -> None:
    fails(engine, source)


def test_unsafe_attribute_message(engine: TemplateEngine) -> None:
    assert "unsafe" in fails(engine, "{{ ''.__class__ }}").message


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("source", "limit"),
    [
        ("{{ 'a' * 10**10 }}", "max_repeat_bytes"),
        ("{{ 10**10 * 'a' }}", "max_repeat_bytes"),
        ("{{ [1] * 10**9 }}", "max_range"),
        ("{{ 10 ** (10 ** 10) }}", "bits"),
        ("{{ (10 ** 1000) ** 1000 }}", "bits"),
        ("{{ range(10**12) | list }}", "max_range"),
        ("{{ range(10**30) }}", "max_range"),
        ("{% for i in range(10**12) %}{% endfor %}", "max_range"),
        ("{{ 'a' | center(10**10) }}", "max_repeat_bytes"),
        ("{{ 'a'.center(10**10) }}", "max_repeat_bytes"),
        ("{{ 'a'.ljust(10**10) }}", "max_repeat_bytes"),
        ("{{ 'a'.zfill(10**10) }}", "max_repeat_bytes"),
        ("{{ ('\t' * 1000).expandtabs(10**6) }}", "max_output_bytes"),
        ("{{ '{:>10000000000}'.format(1) }}", "max_output_bytes"),
        ("{{ '{0:{1}}'.format('a', 10**10) }}", "max_output_bytes"),
        ("{{ ('{0}' * 1000).format('x' * 100000) }}", "max_output_bytes"),
        ("{{ '%10000000000d' % 1 }}", "max_output_bytes"),
        ("{{ '%.10000000000f' % 1.0 }}", "max_output_bytes"),
        ("{{ '%*d' % (10**10, 1) }}", "max_output_bytes"),
        ("{{ '%(a)s%(a)s%(a)s' % {'a': 'x' * 600000} }}", "max_output_bytes"),
        ("{{ '%10000000000d' | format(1) }}", "max_output_bytes"),
        ("{{ ('a' * 1000000) ~ ('a' * 1000000) }}", "max_output_bytes"),
        ("{{ ('a' * 1000000) + ('a' * 1000000) }}", "max_output_bytes"),
        ("{{ range(100000) | join('x' * 1000000) }}", "max_output_bytes"),
        ("{{ ('x' * 1000).join(range(100000) | map('string')) }}", "max_output_bytes"),
        ("{{ ('ab' * 500000).replace('a', 'x' * 1000) }}", "max_output_bytes"),
        ("{{ ('ab' * 500000) | replace('a', 'x' * 1000) }}", "max_output_bytes"),
        ("{{ ('a\n' * 1000) | indent(10**4) }}", "max_output_bytes"),
        ("{{ 'a' | indent(10**10) }}", "max_repeat_bytes"),
        ("{{ ('x' * 1000000) | wordwrap(1, true, 'y' * 1000000) }}", "max_output_bytes"),
        ("{{ ('a ' * 500000) | urlize(target='x' * 1000000) }}", "max_output_bytes"),
        ("{{ range(100000) | list | tojson(100000) }}", "max_output_bytes"),
        ("{{ (1).to_bytes(10**10, 'big') }}", "max_output_bytes"),
        ("{{ [1] | batch(10**9, 0) | list }}", "max_range"),
        ("{{ [1] | slice(10**9) | list }}", "max_range"),
        ("{{ [[1] * 60000, [1] * 60000] | sum(start=[]) }}", "max_range"),
        ("{{ ['a'] | map('center', 10**10) | list }}", "max_repeat_bytes"),
        (
            "{% set ns = namespace(x='a') %}{% for i in range(64) %}"
            "{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x | length }}",
            "max_output_bytes",
        ),
        (
            "{% set ns = namespace(x=[1]) %}{% for i in range(64) %}"
            "{% set ns.x = ns.x + ns.x %}{% endfor %}{{ ns.x | length }}",
            "max_range",
        ),
        (
            "{% set ns = namespace(x=2) %}{% for i in range(64) %}"
            "{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x }}",
            "bits",
        ),
        (
            "{% set s = 'a' * 1000000 %}{% set l = [s, s, s, s, s, s, s, s, s, s] %}"
            "{{ [l, l, l, l, l, l, l, l, l, l] }}",
            "max_output_bytes",
        ),
        (
            "{% set s = 'a' * 1000000 %}{% set l = [s, s, s, s, s, s, s, s, s, s] %}"
            "{{ [l, l, l, l, l, l, l, l, l, l] | tojson }}",
            "max_output_bytes",
        ),
        ("{% set s = 'a' * 1000000 %}{{ [s] * 100000 }}", "max_repeat_bytes"),
        (
            "{% set s = 'a' * 1000000 %}{% set x %}{% for i in range(1000) %}{{ s }}"
            "{% endfor %}{% endset %}{{ x | length }}",
            "max_output_bytes",
        ),
        (
            "{% macro m(s) %}{{ s }}{{ s }}{% endmacro %}"
            "{{ m(m(m(m(m(m(m(m(m(m(m(m(m(m(m(m(m(m(m(m(m('x'))))))))))))))))))))) | length }}",
            "max_output_bytes",
        ),
        ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "max_output_bytes"),
        ("{{ 'x' * 1000000 }}{{ 'x' * 1000000 }}", "max_output_bytes"),
        ("{{ ['x' * 600000, 'x' * 600000] }}", "max_output_bytes"),
    ],
)
def test_bombs_fail_fast_naming_the_limit(engine: TemplateEngine, source: str, limit: str) -> None:
    error = fails(engine, source)
    assert limit in error.message


def test_deeply_nested_values_are_refused(engine: TemplateEngine) -> None:
    build = (
        "{% set ns = namespace(x=[]) %}{% for i in range(1000) %}{% set ns.x = [ns.x] %}"
        "{% endfor %}"
    )
    assert "nested deeper" in fails(engine, build + "{{ ns.x }}").message
    assert "nested deeper" in fails(engine, build + "{{ ns.x | tojson }}").message


def test_nested_loops_stop_at_the_deadline() -> None:
    engine = TemplateEngine(timeout_s=0.2)
    source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    error = fails(engine, source)
    elapsed = time.monotonic() - started
    assert "timeout_s" in error.message
    assert 0.15 < elapsed < 2.0


def test_deadline_applies_to_loops_over_data() -> None:
    engine = TemplateEngine(timeout_s=0.2)
    scope = {"state": {"xs": list(range(100_000))}}
    loops = "{% for a in state.xs %}{% for b in state.xs %}{% endfor %}{% endfor %}"
    assert "timeout_s" in fails(engine, loops, scope).message


def test_deadline_applies_to_expressions() -> None:
    # 100 000 filter calls take tens of milliseconds, far past a 1 ms deadline
    engine = TemplateEngine(timeout_s=0.001)
    with pytest.raises(TemplateError, match="timeout_s"):
        engine.evaluate("range(100000) | map('string') | list | length", {})


def test_output_size_cap() -> None:
    engine = TemplateEngine(max_output_bytes=1000)
    assert engine.render("{{ 'x' * 900 }}!", {}) == "x" * 900 + "!"
    assert "max_output_bytes" in fails(engine, "{{ 'x' * 900 }}{{ 'y' * 200 }}", {}).message
    loop = "{% for i in range(100) %}{{ 'x' * 20 }}{% endfor %}"
    assert "max_output_bytes" in fails(engine, loop, {}).message
    # output is counted in UTF-8 bytes: 400 characters of 3 bytes each
    assert "max_output_bytes" in fails(engine, "{{ '€' * 400 }}.", {}).message
    # whole-string results are bounded too, including values taken from the scope
    big = {"state": {"blob": "x" * 5000, "list": ["x" * 100] * 20}}
    assert "max_output_bytes" in fails(engine, "{{ state.blob }}", big).message
    assert "max_output_bytes" in fails(engine, "{{ state.list }}", big).message
    assert engine.render("{{ state.blob | length }}", big) == 5000


def test_limits_are_configurable() -> None:
    engine = TemplateEngine(max_range=10, max_repeat_bytes=10)
    assert engine.render("{{ range(10) | list | length }}", {}) == 10
    assert "max_range" in fails(engine, "{{ range(11) }}", {}).message
    assert engine.render("{{ 'ab' * 5 }}", {}) == "ab" * 5
    assert "max_repeat_bytes" in fails(engine, "{{ 'ab' * 6 }}", {}).message


@pytest.mark.parametrize(
    "kwargs",
    [{"max_output_bytes": 0}, {"timeout_s": 0}, {"max_range": -1}, {"cache_size": -1}],
)
def test_bad_limits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        TemplateEngine(**kwargs)


# --------------------------------------------------------------------------- evaluate


def test_evaluate_bare_expressions(engine: TemplateEngine) -> None:
    assert engine.evaluate("state.flag and inputs.amount > 100", SCOPE) is True
    assert engine.evaluate("state.list | length", SCOPE) == 3
    assert engine.evaluate("state.none", SCOPE) is None
    assert engine.evaluate("{{ state.n }}", SCOPE) == 1  # tolerated
    with pytest.raises(TemplateError) as info:
        engine.evaluate("state.nope + 1", SCOPE)
    assert info.value.expression == "state.nope + 1"
    assert "has no attribute 'nope'" in info.value.message
    with pytest.raises(TemplateError, match="max_repeat_bytes"):
        engine.evaluate("'a' * 10**10", SCOPE)


# --------------------------------------------------------------------------- check


@pytest.mark.parametrize(
    "source",
    [
        "{{ 1 + }}",
        "{{ state.n",
        "{% if x %}no end",
        "{% endfor %}",
        "{{ x | pprint }}",
        "{{ x | no_such_filter }}",
        "a {{ }} b",
    ],
)
def test_check_refuses_bad_templates(engine: TemplateEngine, source: str) -> None:
    with pytest.raises(TemplateError) as info:
        engine.check(source)
    assert info.value.expression == source
    assert info.value.message


def test_check_accepts_good_templates_without_evaluating(engine: TemplateEngine) -> None:
    engine.check("{{ undefined_name.attr + 1 }}")
    engine.check("Hello {{ a }} {% for x in y %}{{ x }}{% endfor %}")
    engine.check("{{ 'a' * 10**10 }}")  # only compiled, never run
    engine.check("{{ 'a' | center(10000000000) }}")  # constant folding is not attempted
    engine.check("plain text } {")


def test_check_expression(engine: TemplateEngine) -> None:
    engine.check_expression("state.approved")
    engine.check_expression("state.n > 1 and not state.flag")
    for bad in ["state.n >", "a }} b", "", "{% if %}", "1 2"]:
        with pytest.raises(TemplateError) as info:
            engine.check_expression(bad)
        assert info.value.expression == bad
        assert "syntax error" in info.value.message


# --------------------------------------------------------------------------- helpers


def test_has_template() -> None:
    assert has_template("{{ x }}")
    assert has_template({"a": [1, {"b": "x {% if y %}{% endif %}"}]})
    assert not has_template({"{{ key }}": "value", "n": 1, "l": ["a", None]})
    assert not has_template("{# comment #}")
    assert TemplateEngine.has_template("{{ x }}")


def test_iter_templates_paths() -> None:
    value = {"url": "https://x/{{ a }}", "json": {"items": ["{{ b }}", 2, "c"]}, "n": 1}
    found = list(iter_templates(value, ["nodes", "pay", "with"]))
    assert found == [
        (["nodes", "pay", "with", "url"], "https://x/{{ a }}"),
        (["nodes", "pay", "with", "json", "items", 0], "{{ b }}"),
        (["nodes", "pay", "with", "json", "items", 2], "c"),
    ]
    assert found[0][0] is not found[1][0]
    assert list(TemplateEngine().iter_templates("{{ x }}", ["output"])) == [(["output"], "{{ x }}")]
    assert list(iter_templates(5, [])) == []


def test_compiled_templates_are_cached() -> None:
    engine = TemplateEngine(cache_size=2)
    first = engine._compile_template("{{ state.n + 1 }}")
    assert engine._compile_template("{{ state.n + 1 }}") is first
    engine.check("{{ state.n + 1 }}")
    assert engine.render("{{ state.n + 1 }}", SCOPE) == 2
    assert engine._compile_template("{{ state.n + 1 }}") is first
    expr = engine._compile_expression("state.n")
    assert engine._compile_expression("state.n") is expr
    engine._compile_template("{{ a }}")
    engine._compile_template("{{ b }}")
    assert engine._compile_template("{{ state.n + 1 }}") is not first  # evicted (LRU of 2)


def test_rendering_is_fast_enough(engine: TemplateEngine) -> None:
    scope = {"state": {"n": 1}}
    engine.render("{{ state.n + 1 }}", scope)
    started = time.perf_counter()
    for _ in range(2000):
        engine.render("{{ state.n + 1 }}", scope)
    per_call = (time.perf_counter() - started) / 2000
    assert per_call < 500e-6  # generous: ~10 µs on a laptop
