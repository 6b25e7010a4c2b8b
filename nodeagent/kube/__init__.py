"""The Kubernetes API client: credentials, one request funnel, watches; validation rules; pure Node patches."""
