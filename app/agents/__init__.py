"""Language-model agents (DESIGN §9): provider clients, tools and the durable loop."""
