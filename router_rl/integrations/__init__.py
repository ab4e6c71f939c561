"""router-rl inside other systems: ``router_rl.integrations.litellm`` (a LiteLLM custom routing strategy).

Each module imports its host library (LiteLLM, ...) itself; nothing here is imported by ``router_rl.serve``.
"""
