"""Several replicas, one view: a local PostgreSQL, N replicas on it, and nginx in front of them."""
