"""Sandboxed, bounded Jinja templates for workflow definitions (DESIGN.md §2, §8).

:class:`TemplateEngine` compiles and evaluates the template strings and bare expressions
of workflow definitions in a sandbox bounded in size and time; every failure surfaces as
:class:`TemplateError`. The modules, from the top down (each imports only modules listed
below it):

* :mod:`.engine`: :class:`TemplateEngine` (compiling with an LRU cache, rendering,
  evaluating) and the mapping of every failure to :class:`TemplateError`.
* :mod:`.environment`: the bounded sandboxed environment templates run in, assembled from
  the layers below, with its globals, filter table and attribute access.
* :mod:`.calls`: the layer bounding method calls and filters.
* :mod:`.operators`: the layer bounding ``+``, ``*``, ``**`` and ``%``.
* :mod:`.formatting`: the layer bounding ``str.format``/``format_map`` and printf-style
  formatting, and the bounded ``string.Formatter``.
* :mod:`.limits`: the base layer: the limits, the per-thread deadline and size checks.
* :mod:`.codegen`: the code generator routing ``~`` and ``{% for %}`` through the
  environment.
* :mod:`.walker`: estimating the printed size of a value and making native results
  JSON-shaped.
* :mod:`.scan`: finding the template strings inside a value (:func:`has_template`,
  :func:`iter_templates`).
* :mod:`.errors`: :class:`TemplateError` and the internal errors.
"""

from app.engine.templates.engine import TemplateEngine
from app.engine.templates.errors import TemplateError
from app.engine.templates.scan import has_template, iter_templates

__all__ = ["TemplateEngine", "TemplateError", "has_template", "iter_templates"]
