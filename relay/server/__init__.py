"""The relay's HTTP surface: webhooks, /metrics, /healthz, /readyz, and the console."""
