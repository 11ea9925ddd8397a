"""OpenAI-compatible speculative decoding service on Ray Serve.

`config` (typed app args + the sweep's best-configuration schema), `protocol` (OpenAI wire
format, request validation), `service` (models + decoding, no Ray), `http` (Starlette routes),
`metrics` (Prometheus via Ray) and `app` (the Serve deployment and `build_app`).
"""
