"""Tools a team's models may call: HTTP APIs, read-only SQL and MCP servers, under grants, approval and audit."""
