"""Subgraph frames: a stored workflow run inline inside a node of this run.

Entering pushes a frame (its own namespaced state) onto the run's document; the
runner then executes the innermost frame, so a pause inside a subgraph is a pause of
this run, answered on this run. When the frame ends, its output becomes the output of
the node that entered it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jsonschema import ValidationError as SchemaValidationError
from jsonschema.validators import validator_for
from sqlalchemy.ext.asyncio import AsyncSession

from app.engine import memory
from app.engine.templates import TemplateError
from app.errors import NotFound
from app.schemas.definition import WorkflowDefinition
from app.steps.base import StepError
from app.store.database import transaction
from app.store.models import Run

if TYPE_CHECKING:
    from app.engine.runner import RunExecution
    from app.engine.services import Engine


class SubgraphFrames:
    """The definitions of the run's frames, parallel to ``doc["frames"]``."""

    def __init__(self, engine: Engine, definitions: list[WorkflowDefinition]) -> None:
        self.engine = engine
        self._definitions = definitions

    @staticmethod
    async def definitions_of(
        engine: Engine, session: AsyncSession, run: Run, doc: memory.Doc
    ) -> list[WorkflowDefinition]:
        """The workflow of each frame of ``doc``: the run's own, then its subgraphs'."""
        definitions = [await engine.definitions.for_run(session, run)]
        for frame in doc["frames"][1:]:
            ref = frame["workflow"]
            definition, _, _ = await engine.definitions.stored(session, ref["name"], ref["version"])
            definitions.append(definition)
        return definitions

    @classmethod
    async def load(
        cls, engine: Engine, session: AsyncSession, run: Run, doc: memory.Doc
    ) -> SubgraphFrames:
        return cls(engine, await cls.definitions_of(engine, session, run, doc))

    @property
    def top(self) -> WorkflowDefinition:
        return self._definitions[0]

    def definition(self, index: int) -> WorkflowDefinition:
        return self._definitions[index]

    async def enter(
        self, execution: RunExecution, index: int, node_id: str, config: dict[str, Any], visit: int
    ) -> StepError | None:
        """Push the subgraph's frame; a StepError when it cannot start."""
        depth = execution.nesting + len(execution.doc["frames"])
        if depth > self.engine.settings.max_subgraph_depth:
            return StepError(
                "subgraph_depth_exceeded",
                f"maps and subgraphs nest deeper than {self.engine.settings.max_subgraph_depth}",
            )
        name, version = config.get("workflow"), config.get("version")
        inputs = config.get("inputs") or {}
        if not isinstance(name, str) or not isinstance(inputs, dict):
            return StepError(
                "invalid_step_config", "subgraph needs `with.workflow` and object `with.inputs`"
            )
        if version is not None and not isinstance(version, int):
            return StepError("invalid_step_config", "subgraph `with.version` must be an integer")
        try:
            async with transaction(self.engine.sessions) as session:
                definition, version, _ = await self.engine.definitions.stored(
                    session, name, version
                )
        except NotFound as exc:
            return StepError("workflow_not_found", exc.message)
        if definition.inputs is not None:
            errors = sorted(
                validator_for(definition.inputs)(definition.inputs).iter_errors(inputs), key=str
            )
            if errors:
                first: SchemaValidationError = errors[0]
                return StepError(
                    "invalid_subgraph_inputs", f"inputs of subgraph {name!r}: {first.message}"
                )
        path = memory.node_path(execution.doc, index, node_id)
        try:
            frame = memory.new_frame(
                definition,
                inputs,
                self.engine.templates,
                workflow={"name": name, "version": version},
                inputs=inputs,
                parent_node=node_id,
                subgraph_id=f"{execution.run_id}:{path}:{visit}",
            )
        except TemplateError as exc:
            return StepError(
                "expression_error", f"initial state of subgraph {name!r}: {exc.message}"
            )
        execution.doc = {**execution.doc, "frames": [*execution.doc["frames"], frame]}
        self._definitions.append(definition)
        return None

    def leave(self, execution: RunExecution, index: int) -> tuple[str, Any]:
        """Pop the finished frame: the parent node it ran in, and its output.

        Raises TemplateError when the subgraph's ``output`` does not render."""
        frame = execution.doc["frames"][index]
        definition = self._definitions[index]
        if definition.output is None:
            output = frame["state"]
        else:
            scope = {
                "inputs": frame.get("inputs", {}),
                "state": frame["state"],
                "nodes": frame["nodes"],
                "context": {},
            }
            output = self.engine.templates.render(definition.output, scope)
        execution.doc = {**execution.doc, "frames": execution.doc["frames"][:index]}
        del self._definitions[index:]
        return frame["parent_node"], output
