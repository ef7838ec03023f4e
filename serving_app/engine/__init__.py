"""The studio's in-process inference server: an OpenAI-compatible HTTP API over base models and LoRA adapters.

No Django here: ``python -m serving_app.engine --registry models.json --port N`` runs it on loopback, and the
studio talks to it over HTTP (``client.py``). Production may put vLLM behind the same API instead.
"""
