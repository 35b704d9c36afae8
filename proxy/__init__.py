"""Sluicegate: a per-tenant, cost-aware throttling reverse proxy for Elasticsearch and OpenSearch."""
__version__ = "0.1.0"
