"""Serving: chatting with models, comparing them, and publishing them behind an OpenAI-compatible API.

What it can do, one module each (services are plain functions taking ``access=`` and keyword arguments):

- ``catalog``: which models a person may use (``usable_models``, ``resolve_model``) and the inference
  server's registry file (``publish``);
- ``inference``: one metered, streamed answer from the inference server (``stream_answer``);
- ``comparisons``: saved side-by-side comparisons and prompt presets;
- ``arena``: blind battles, votes, the Bradley–Terry leaderboard and the export to a preference dataset;
- ``feedback``: thumbs up/down on playground answers and their export to a feedback dataset (KTO);
- ``exports``: what both exports share (the upload of the rows, holding back restricted model versions);
- ``deployments``: deployments, API-key scopes, per-key rate limits and the usage summary;
- ``openai_api``: ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` for team API keys;
- ``playground`` and ``ui/``: the Gradio app at ``/play/`` (Compare and Arena tabs); ``pages/``: the site's pages;
- ``engine/``: the inference server itself (no Django), ``python -m serving_app.engine``: vLLM servers it
  starts and supervises, the in-process engine for what vLLM cannot serve.
"""
