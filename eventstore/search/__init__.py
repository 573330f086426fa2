"""The search index: document format, index template, and the query adapter (OpenSearch)."""
