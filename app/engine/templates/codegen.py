"""The code generator of the bounded environment (see :mod:`.environment`)."""

from __future__ import annotations

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame


class _BoundedCodeGenerator(CodeGenerator):
    """Routes ``~`` concatenation and ``{% for %}`` iterables through the environment."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # {% for x in seq %} iterates environment.guard_loop(seq), which checks the deadline
        # every few items. (Jinja refuses custom node types, hence a Call node.)
        it = node.iter
        if not (
            isinstance(it, nodes.Call)
            and isinstance(it.node, nodes.EnvironmentAttribute)
            and it.node.name == "guard_loop"
        ):
            guard = nodes.EnvironmentAttribute("guard_loop", lineno=it.lineno)
            node.iter = nodes.Call(guard, [it], [], None, None, lineno=it.lineno)
            node.iter.set_environment(self.environment)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")
