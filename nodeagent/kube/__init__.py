"""The Kubernetes API client: credentials, one request funnel, watches; and the API's validation rules."""
