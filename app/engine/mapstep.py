"""``step: map``: a stored workflow run once per item, inside this run (DESIGN §10).

``with: {workflow, version?, items, inputs, max_concurrency?, on_item_failure?}``; the
node's output is the list of the items' outputs, in item order.

The node puts a parallel section of kind ``map`` in its frame (``app.engine.branchdoc``):
its ``branches`` are the items started and not yet finished (each an inline execution of
the workflow, branch id ``node[3]``), ``next`` the next item to start and ``results``
the finished items' outputs (in chunks of ``CHUNK``, so that a checkpoint's delta
touches one chunk). At most ``max_concurrency`` items run at once: a map of 10,000 items
never holds more tasks, executions or connections than that. An item's inputs are
rendered when it starts (``item`` and ``index`` in scope), so ``with.inputs`` is not
rendered with the node's other fields.
"""

from __future__ import annotations

from typing import Any

from jsonschema.validators import validator_for

from app.engine import mapconfig, memory
from app.engine.branchdoc import PARALLEL
from app.engine.branches import pause_run, run_section
from app.engine.branchexec import (
    BranchExecution,
    BranchFailed,
    Live,
    ParallelRuntime,
    root_doc,
    root_of,
    runtime_of,
    write_locked,
)
from app.engine.lifecycle import RunStatus
from app.engine.runner import RunExecution
from app.engine.templates import TemplateError
from app.errors import NotFound
from app.schemas.definition import Node, WorkflowDefinition
from app.steps.base import StepError
from app.store.database import transaction
from app.store.events import NewEvent

CHUNK = 100


async def _workflow(
    execution: RunExecution, name: str, version: int | None
) -> tuple[WorkflowDefinition, int] | StepError:
    try:
        async with transaction(execution.engine.sessions) as session:
            definition, found, _ = await execution.engine.definitions.stored(session, name, version)
    except NotFound as exc:
        return StepError("workflow_not_found", exc.message)
    return definition, found


async def start_map(execution: RunExecution, i: int, node_id: str, node: Node) -> bool:
    """Run a ``map`` node: check its config and open its section (the items then run
    from ``run_map``)."""
    context = execution._context(i, node_id, node, {})
    scope = execution._scope(i, context)
    fields = {k: v for k, v in node.with_.items() if k != "inputs"}
    try:
        config = execution.engine.templates.render(fields, scope)
    except TemplateError as exc:
        return await execution._fail(i, node_id, execution._template_error(i, node_id, exc))
    path = memory.node_path(execution.doc, i, node_id)
    visit = execution.doc["frames"][i]["visits"].get(node_id, 1)
    execution.events.append(NewEvent("node.started", path, {"step": "map", "visit": visit}))
    limit = execution.engine.settings.max_subgraph_depth
    if execution.nesting + len(execution.doc["frames"]) > limit:  # a map of itself, say
        msg = f"maps and subgraphs nest deeper than {limit}"
        return await execution._fail(i, node_id, StepError("subgraph_depth_exceeded", msg))
    error, section = await _section(execution, node_id, node, config)
    if error is not None:
        return await execution._fail(i, node_id, error)
    if not section["items"]:
        return await execution._succeeded(i, node_id, [])
    execution.doc = memory.replace_frame(execution.doc, i, **{PARALLEL: section})
    execution.pure = False
    return await execution._commit(RunStatus.RUNNING, i, node_id)


async def _section(
    execution: RunExecution, node_id: str, node: Node, config: dict[str, Any]
) -> tuple[StepError | None, dict[str, Any]]:
    inputs = node.with_.get("inputs", {})
    problem = mapconfig.config_problem({**config, "inputs": inputs})
    if problem is not None:
        return problem[1], {}
    items = config["items"]
    limit = config.get("max_concurrency", mapconfig.DEFAULT_ITEM_CONCURRENCY)
    on_failure = config.get("on_item_failure", "fail")
    found = await _workflow(execution, config["workflow"], config.get("version"))
    if isinstance(found, StepError):
        return found, {}
    _, version = found
    chunks = [[None] * min(CHUNK, len(items) - k) for k in range(0, len(items), CHUNK)]
    section = {
        "kind": "map",
        "from": node_id,
        "join": None,
        "base": {},
        "workflow": {"name": config["workflow"], "version": version},
        "items": items,
        "inputs": inputs,
        "max_concurrency": limit,
        "on_item_failure": on_failure,
        "next": 0,
        "results": chunks,
        "branches": [],
    }
    return None, section


def results_of(section: dict[str, Any]) -> list[Any]:
    return [value for chunk in section["results"] for value in chunk]


def _with_result(section: dict[str, Any], index: int, value: Any) -> dict[str, Any]:
    chunks = list(section["results"])
    chunk = list(chunks[index // CHUNK])
    chunk[index % CHUNK] = value
    chunks[index // CHUNK] = chunk
    return {**section, "results": chunks}


class MapItem(BranchExecution):
    """One item's execution of the mapped workflow."""

    mapping: MapLive

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nesting += 1  # its workflow runs inside the map node's
        self.finished: dict[str, Any] | None = None  # {"output"} or {"error"}

    async def _complete(self) -> bool:
        frame = self.doc["frames"][0]
        definition = self.frames.definition(0)
        if definition.output is None:
            output = frame["state"]
        else:
            scope = {
                "inputs": self.inputs,
                "state": frame["state"],
                "nodes": frame["nodes"],
                "context": {},
            }
            try:
                output = self.engine.templates.render(definition.output, scope)
            except TemplateError as exc:
                last = frame["last"] or "output"
                return await self._fail(0, last, self._template_error(0, last, exc))
        self.finished = {"output": output}
        return await self._commit(RunStatus.RUNNING, 0, frame["last"])

    async def _commit(self, status: RunStatus, i: int, last_node: str | None, **kw: Any) -> bool:
        if status is RunStatus.FAILED and self.mapping.collect:
            self.finished = {"error": kw.get("error")}
            self.events = [e for e in self.events if e.type != "run.failed"]
            status = RunStatus.RUNNING
            kw = {}
        return await super()._commit(status, i, last_node, **kw)

    def runnable(self) -> bool:
        return self.finished is None and super().runnable()

    def _step_name(self, path: str) -> str:
        return f"{self.branch_id}/{path}"  # every item runs the same nodes: keys differ

    def _settle(self) -> None:
        if self.finished is not None:
            self.mapping.finish(self)


class MapLive(Live):
    """The items of one map node while they run: the window, the section, the results."""

    def __init__(
        self, execution: RunExecution, i: int, section: dict[str, Any], child: WorkflowDefinition
    ) -> None:
        super().__init__(i, [])
        self.execution = execution
        self.child = child
        self.collect = section["on_item_failure"] == "collect"
        self.section: dict[str, Any] = section
        self.running = 0
        self.runtime = runtime_of(root_of(execution))
        self.resumed = [self.adopt(entry) for entry in section["branches"]]

    def adopt(self, entry: dict[str, Any]) -> MapItem:
        item = MapItem(self.execution, self.i, entry, None, [self.child])
        item.mapping = self
        item.inputs = entry["inputs"]
        self.children[item.branch_id] = item
        return item

    def opened(self) -> None:
        for item in self.resumed:  # items a checkpoint holds first, then new ones
            if item.runnable():
                self.launch(item)
        self.start_more()

    def finish(self, item: MapItem) -> None:
        """The item is done: its output (or error) goes to the results (writer's lock)."""
        assert item.finished is not None
        index = int(item.branch_id.rsplit("[", 1)[1][:-1])
        value = item.finished.get("output", item.finished)
        section = _with_result(self.section, index, value)
        branches = [e for e in section["branches"] if e["id"] != item.branch_id]
        self.section = {**section, "branches": branches}
        del self.children[item.branch_id]

    def start_more(self) -> None:
        """Start items while fewer than ``max_concurrency`` run."""
        while (
            not self.runtime.root.stopping()
            and self.running < self.section["max_concurrency"]
            and self.section["next"] < len(self.section["items"])
        ):
            index = self.section["next"]
            entry, error = self._entry(index)
            if error is not None and not self.collect:  # a resume tries the item again
                raise BranchFailed(f"{self.section['from']}[{index}]", None, error, [])
            self.section = {**self.section, "next": index + 1}
            if error is not None:
                self.section = _with_result(self.section, index, {"error": error})
                continue
            self.section = {**self.section, "branches": [*self.section["branches"], entry]}
            self.launch(self.adopt(entry))

    def launch(self, item: MapItem) -> None:
        assert self.group is not None
        self.running += 1
        self.tasks[item.branch_id] = self.group.create_task(self._run(item))

    def start(self, child: BranchExecution, runtime: ParallelRuntime) -> None:
        assert isinstance(child, MapItem)
        self.launch(child)

    async def revive(self, entry: dict[str, Any]) -> BranchExecution:
        return self.adopt(entry)

    async def _run(self, item: MapItem) -> None:
        try:
            await item.run(self.runtime)
        finally:
            self.running -= 1
        self.start_more()

    def _entry(self, index: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A new item's section entry, or the error that keeps it from starting."""
        execution, section = self.execution, self.section
        node_id = section["from"]
        frame = execution.doc["frames"][self.i]
        branch_id = f"{node_id}[{index}]"
        scope = {
            **execution._scope(self.i, {"run_id": execution.run_id, "node": node_id}),
            "item": section["items"][index],
            "index": index,
        }
        try:
            inputs = execution.engine.templates.render(section["inputs"], scope)
            if not isinstance(inputs, dict):
                return {}, _item_error(branch_id, "invalid_item_inputs", "inputs must be an object")
            first = memory.new_frame(
                self.child,
                inputs,
                execution.engine.templates,
                workflow=section["workflow"],
                inputs=inputs,
                parent_node=node_id,
                subgraph_id=f"{execution.run_id}:{branch_id}:{frame['visits'].get(node_id, 1)}",
            )
        except TemplateError as exc:
            error = execution._template_error(self.i, node_id, exc)
            return {}, _item_error(branch_id, error.code, error.message)
        if self.child.inputs is not None:
            schema = self.child.inputs
            errors = sorted(validator_for(schema)(schema).iter_errors(inputs), key=str)
            if errors:
                msg = f"inputs of item {index}: {errors[0].message}"
                return {}, _item_error(branch_id, "invalid_item_inputs", msg)
        doc = {"frames": [first], "interrupt": None, "awaiting": None, "written": []}
        return {"id": branch_id, "inputs": inputs, "doc": doc}, None


def _item_error(branch_id: str, code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "node": branch_id}


async def run_map(execution: RunExecution, i: int) -> bool:
    """Run the map section of frame ``i`` until its items are done, the run pauses or
    the node fails."""
    section = execution.doc["frames"][i][PARALLEL]
    node_id = section["from"]
    found = await _workflow(execution, section["workflow"]["name"], section["workflow"]["version"])
    if isinstance(found, StepError):
        return await execution._fail(i, node_id, found)
    live = MapLive(execution, i, section, found[0])
    try:
        await run_section(execution, live, [])
    except BranchFailed as failure:
        return await _item_failed(execution, live, failure)
    section = execution.doc["frames"][i][PARALLEL]
    if section["next"] >= len(section["items"]) and not section["branches"]:
        frames = list(execution.doc["frames"])
        frames[i] = {k: v for k, v in frames[i].items() if k != PARALLEL}
        execution.doc = {**execution.doc, "frames": frames}
        return await execution._succeeded(i, node_id, results_of(section))
    if live.runtime.root.stopping():  # a draining process: the run stays claimable
        return not isinstance(execution, BranchExecution)
    if isinstance(execution, BranchExecution):
        return False  # items of its own wait: the run pauses
    return await pause_run(live.runtime)


async def _item_failed(execution: RunExecution, live: MapLive, failure: BranchFailed) -> bool:
    """``on_item_failure: fail``: the map node fails with the item's error."""
    runtime = live.runtime
    node_id = live.section["from"]

    async def write() -> bool:
        if failure.branch is not None:
            failure.branch.committed = failure.branch.doc  # it is retried on a resume
        if isinstance(execution, BranchExecution):
            execution.doc = execution.committed = execution.composed()
            execution.live = None
        else:
            execution.doc = root_doc(runtime)
            runtime.live = None
        execution.events.extend(e for e in failure.events if e.type != "run.failed")
        error = failure.error
        message = f"item {failure.branch_id} failed: {error.get('message')}"
        details = {"item": failure.branch_id, "error": error}
        step_error = StepError(error["code"], message, details=details)
        return await execution._fail(live.i, node_id, step_error)

    return bool(await write_locked(runtime, write))
