"""Secrets in templates (DESIGN §8: a secret's value never appears in a run, checkpoint,
event, error or log).

What a step returns is redacted by value: every occurrence of a secret as configured (and
its URL- and JSON-encoded forms) becomes ``***``. That holds only for the value itself, so
a template may insert a secret *as is* and nothing more: ``{{ secrets.NAME }}`` (or
``secrets['NAME']``), alone or in text, in a list or an object, as a branch of an inline
``if``, or with ``| default(...)`` or ``| urlencode``. A secret transformed (``| upper``, a slice, ``~``, a
comparison, a method call) or the ``secrets`` object as a whole could come out in a form
no redaction recognises: such a template is refused when the definition is stored.

:class:`SecretValues` is the ``secrets`` object in a template's scope: a name it does not
hold is an error (``unknown secret``), not a missing key that would render as nothing.
"""

from __future__ import annotations

from jinja2 import nodes

SECRETS = "secrets"
# filters whose result is the value, or a form of it the redaction knows (percent-encoded)
_PASSING_FILTERS = frozenset({"default", "d", "urlencode"})


class SecretValues(dict[str, str]):
    """The configured secrets, by name."""


def secret_problems(tree: nodes.Template, *, allowed: bool) -> list[str]:
    """Why a parsed template may not use ``secrets`` as it does (empty: it may). With
    ``allowed`` False, any use is a problem."""
    parents: dict[int, nodes.Node] = {}
    uses: list[nodes.Name] = []
    todo: list[nodes.Node] = [tree]
    while todo:
        node = todo.pop()
        for child in node.iter_child_nodes():
            parents[id(child)] = node
            todo.append(child)
        if isinstance(node, nodes.Name) and node.name == SECRETS:
            uses.append(node)
    if uses and not allowed:
        return ["`secrets` is only available in a node's `with`, a tool's `http` and a "
                "model's `api_key` (not in a subgraph's `with`)"]  # fmt: skip
    problems = []
    for name in uses:
        ref = parents.get(id(name))
        if ref is None or not _is_reference(ref, name):
            problems.append("`secrets` can only be used by name: `{{ secrets.NAME }}`")
        elif not _inserted_as_is(ref, parents):
            problems.append(
                f"secret {_name_of(ref)!r} can only be inserted as is (`{{{{ secrets.NAME }}}}`, "
                "alone or in text, a list or an object): a transformed secret could not be "
                "redacted"
            )
    return problems


def _is_reference(node: nodes.Node, name: nodes.Name) -> bool:
    if isinstance(node, nodes.Getattr):
        return node.node is name
    if isinstance(node, nodes.Getitem):
        return node.node is name and isinstance(node.arg, nodes.Const)
    return False


def _name_of(ref: nodes.Node) -> str:
    if isinstance(ref, nodes.Getattr):
        return str(ref.attr)
    assert isinstance(ref, nodes.Getitem)
    assert isinstance(ref.arg, nodes.Const)
    return str(ref.arg.value)


def _inserted_as_is(ref: nodes.Node, parents: dict[int, nodes.Node]) -> bool:
    """Whether the value of ``ref`` reaches the output unchanged."""
    current = ref
    while True:
        parent = parents.get(id(current))
        if isinstance(parent, nodes.Output):
            return True
        passes = (
            isinstance(parent, nodes.List | nodes.Tuple | nodes.Dict)
            or (isinstance(parent, nodes.Pair) and parent.value is current)
            or (isinstance(parent, nodes.CondExpr) and current is not parent.test)
            or (
                isinstance(parent, nodes.Filter)
                and parent.name in _PASSING_FILTERS
                and (parent.node is current or any(a is current for a in parent.args))
            )
        )
        if not passes:
            return False
        assert parent is not None
        current = parent
