"""What runs a granted tool call in the ``tools`` worker: outbound HTTP through one egress guard, read-only SQL.

Nothing here imports Django or another app (import-linter enforces it): the worker that runs it holds no studio
database credentials, only the tool's own secret, handed to it with the call.
"""
