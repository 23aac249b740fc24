"""The execution engine: the runner cycle, templates, edges, state and the run lifecycle."""
