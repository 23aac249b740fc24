"""The user documentation (docs/) stays true to the code.

Everything a user can meet — step types, event types, error codes, settings — is derived
from the source here (the registry, an AST walk of ``app/``, the Settings model), never
from a list kept in this test, and must be documented. Relative links in the README and
docs/ must point at files (and headings) that exist.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from app.steps.registry import ENGINE_STEPS, builtin_steps

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
DOCS = ROOT / "docs"

# What an error code and an event type look like.
CODE = re.compile(r"^[a-z][a-z0-9_]*$")
EVENT_TYPE = re.compile(r"^[a-z]+(?:\.[a-z_]+)+$")
ENV_VAR = re.compile(r"STEPWISE_[A-Z0-9_]+")
# Calls whose first string argument is an error code (besides ``*Error(...)`` classes and
# any ``code=`` keyword): ``StepResult.failed``, the runner's ``_error``, ``problem``.
CODE_FUNCTIONS = frozenset({"failed", "_error", "problem", "_send_problem"})


# --------------------------------------------------------------------------- the source


def _literals(node: ast.expr | None) -> list[str]:
    """The string constants an expression can evaluate to without calling anything:
    ``"x"``, ``"a" if c else "b"``, ``value or "default"``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _literals(node.body) + _literals(node.orelse)
    if isinstance(node, ast.BoolOp):
        return [s for value in node.values for s in _literals(value)]
    return []


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _is_code_call(name: str) -> bool:
    """``StepResult.failed(code, …)``, ``StepError(code, …)``, ``ModelError(code, …)``…
    (a builtin exception's first argument is a message, not a code)."""
    return name in CODE_FUNCTIONS or (name.endswith("Error") and not hasattr(builtins, name))


def _all_strings(node: ast.AST) -> Iterator[str]:
    for child in ast.walk(node):
        if isinstance(child, ast.Constant) and isinstance(child.value, str):
            yield child.value


def _codes_in(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        found: list[str] = []
        if isinstance(node, ast.Call):
            found += [s for kw in node.keywords if kw.arg == "code" for s in _literals(kw.value)]
            if _is_code_call(_name(node.func)):
                for arg in node.args:
                    if _literals(arg):
                        found += _literals(arg)
                        break
        elif isinstance(node, ast.Dict):  # {"code": "internal_error", "message": …}
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "code":
                    found += _literals(value)
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [_name(t) for t in targets]
            if "code" in names:  # code = "interrupt_rejected" if … else …; class attributes
                found += _literals(node.value)
            if any(n.endswith("_CODES") for n in names) and isinstance(node.value, ast.Dict):
                # {415: ("unsupported_media_type", "Unsupported media type"), …}
                for value in node.value.values:
                    first = value.elts[0] if isinstance(value, ast.Tuple) else value
                    found += _literals(first)
        elif isinstance(node, ast.arguments):  # def f(…, code: str = "invalid_transition")
            positional = [*node.posonlyargs, *node.args]
            defaults = list(
                zip(positional[len(positional) - len(node.defaults) :], node.defaults, strict=True)
            )
            defaults += [
                (a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d
            ]
            found += [
                s for arg, default in defaults if arg.arg == "code" for s in _literals(default)
            ]
        yield from (s for s in found if CODE.match(s))


def _event_types_in(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and "event" in _name(node.func).lower():
            # NewEvent("run.started", …), ctx.event("message.delta", …), _step_event(p, "…")
            args = [*node.args, *(kw.value for kw in node.keywords if kw.arg == "type")]
            yield from (s for arg in args for s in _literals(arg) if EVENT_TYPE.match(s))
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            # STATUS_EVENT_TYPES = frozenset({...}), _RUN_EVENTS = {"run.started": …}
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any("EVENT" in _name(t) for t in targets):
                yield from (s for s in _all_strings(node.value) if EVENT_TYPE.match(s))


def _problem_types_in(tree: ast.AST) -> Iterator[str]:
    """The ``type`` of each ``errors[]`` item: ``error_item(loc, msg, "unknown_step")``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) == "error_item":
            args = [*node.args[2:3], *(kw.value for kw in node.keywords if kw.arg == "type_")]
            yield from (s for arg in args for s in _literals(arg) if CODE.match(s))


def _env_vars_in(tree: ast.AST) -> Iterator[str]:
    """``STEPWISE_*`` names in any string: ``os.environ.get("STEPWISE_MIGRATIONS_DIR")``,
    ``envvar="STEPWISE_URL"``, a message that says which variable to set."""
    for value in _all_strings(tree):
        yield from ENV_VAR.findall(value)


def _env_var_documented(variable: str, text: str) -> bool:
    """Named as is, or as a family: ``STEPWISE_SECRET_<NAME>`` documents
    ``STEPWISE_SECRET_`` and ``STEPWISE_SECRET_PAYMENTS``."""
    if variable in text:
        return True
    prefixes = [variable[: i + 1] for i, ch in enumerate(variable) if ch == "_"]
    return any(f"{prefix}<" in text for prefix in prefixes)


def _app_trees() -> Iterator[tuple[Path, ast.AST]]:
    for path in sorted(APP.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _collect(finder: str) -> dict[str, str]:
    """What ``finder`` finds in app/, each with the first file it was found in."""
    find = {
        "codes": _codes_in,
        "events": _event_types_in,
        "problem types": _problem_types_in,
        "env": _env_vars_in,
    }[finder]
    found: dict[str, str] = {}
    for path, tree in _app_trees():
        for item in find(tree):
            found.setdefault(item, str(path.relative_to(ROOT)))
    return found


# --------------------------------------------------------------------------- the docs


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _code_spans(text: str) -> set[str]:
    """The contents of every `inline code` span."""
    return set(re.findall(r"`([^`\n]+)`", text))


def _missing(items: Iterable[str], documented: set[str]) -> list[str]:
    return sorted(item for item in items if item not in documented)


def _where(found: dict[str, str], missing: list[str]) -> str:
    return ", ".join(f"{item} ({found[item]})" for item in missing)


def test_the_source_scans_find_what_the_code_defines() -> None:
    """The scans below are not vacuous: they find codes, events and settings that are
    certainly in the code, by each way the code spells them."""
    codes, events = _collect("codes"), _collect("events")
    for code in (
        "no_matching_edge",  # _error("no_matching_edge", …)
        "http_error",  # StepResult.failed("http_error", …)
        "run_not_found",  # NotFound(…, code="run_not_found")
        "internal_error",  # {"code": "internal_error", …} and problem(500, "internal_error")
        "interrupt_rejected",  # code = "interrupt_rejected" if … else "interrupt_timed_out"
        "interrupt_timed_out",
        "not_found",  # class NotFound: code = "not_found"
        "method_not_allowed",  # _HTTP_CODES
        "invalid_transition",  # a `code` parameter's default
    ):
        assert code in codes, code
    assert {"run.queued", "node.completed", "branch.evaluated", "step.progress"} <= set(events)
    assert {"STEPWISE_SECRET_", "STEPWISE_MIGRATIONS_DIR", "STEPWISE_URL"} <= set(_collect("env"))


def test_the_scans_read_every_spelling() -> None:
    source = """
class MyError(Exception): ...
def f(code: str = "from_default", *, other: str = "x"): ...
StepResult.failed("from_failed", "message")
StepError("from_steperror", "message")
ModelError("from_modelerror", "m", True)
ValueError("not_a_code")
raise Conflict("a message", code="from_keyword")
error = {"code": "from_dict", "message": "m"}
code = "from_if" if rejected else "from_else"
_HTTP_CODES = {404: ("from_table", "Not found")}
NewEvent("run.from_newevent", None, {})
error_item(["nodes", "a"], "message", "from_error_item")
error_item(["x"], "message", type_="from_type_keyword")
ctx.event("tool.from_ctx_event", node=n)
STEP_EVENT_TYPES = frozenset({"step.from_set"})
"""
    tree = ast.parse(source)
    assert set(_codes_in(tree)) == {
        "from_default",
        "from_failed",
        "from_steperror",
        "from_modelerror",
        "from_keyword",
        "from_dict",
        "from_if",
        "from_else",
        "from_table",
    }
    assert set(_problem_types_in(tree)) == {"from_error_item", "from_type_keyword"}
    assert set(_event_types_in(tree)) == {
        "run.from_newevent",
        "tool.from_ctx_event",
        "step.from_set",
    }


def test_every_builtin_step_type_has_a_section() -> None:
    text = _read("definitions.md")
    headings = set(re.findall(r"^###+ `([^`]+)`\s*$", text, re.MULTILINE))
    steps = {*builtin_steps(), *ENGINE_STEPS}
    assert steps, "no built-in steps found"
    missing = sorted(steps - headings)
    assert not missing, f"docs/definitions.md has no '### `step`' section for: {missing}"


def test_every_event_type_is_documented() -> None:
    events = _collect("events")
    missing = _missing(events, _code_spans(_read("api.md")))
    assert not missing, f"event types missing from docs/api.md: {_where(events, missing)}"


def test_every_error_code_is_documented() -> None:
    codes = _collect("codes")
    documented = _code_spans(_read("api.md")) | _code_spans(_read("definitions.md"))
    missing = _missing(codes, documented)
    assert not missing, (
        f"error codes missing from docs/api.md and docs/definitions.md: {_where(codes, missing)}"
    )


def test_every_validation_error_type_is_documented() -> None:
    types = _collect("problem types")
    assert {"unknown_step", "unreachable", "unmarked_cycle"} <= set(types)
    documented = _code_spans(_read("api.md")) | _code_spans(_read("definitions.md"))
    missing = _missing(types, documented)
    assert not missing, (
        f"errors[].type values missing from docs/definitions.md: {_where(types, missing)}"
    )


def test_every_setting_is_documented() -> None:
    text = _read("operations.md")
    settings = [f"STEPWISE_{name.upper()}" for name in Settings.model_fields]
    assert settings
    missing = [variable for variable in settings if variable not in text]
    assert not missing, f"settings missing from docs/operations.md: {missing}"


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    variables = _collect("env")
    text = _read("operations.md")
    missing = sorted(v for v in variables if not _env_var_documented(v, text))
    assert not missing, (
        f"STEPWISE_ variables missing from docs/operations.md: {_where(variables, missing)}"
    )


# --------------------------------------------------------------------------- links

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _without_code(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*\s*$", FENCE.sub("", path.read_text()), re.M):
        slug = _slug(heading)
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


DOC_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(doc: Path) -> None:
    broken = []
    for target in LINK.findall(_without_code(doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif not path.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"broken links in {doc.relative_to(ROOT)}: {broken}"


def test_the_readme_links_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = set(LINK.findall(readme))
    for name in ("definitions.md", "api.md", "operations.md"):
        assert f"docs/{name}" in targets, f"README.md does not link docs/{name}"
