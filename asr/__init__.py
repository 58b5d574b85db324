"""Audio in, text out: the recognition library of voice-search.

No web framework, no environment reads and no work at import time; the serving layer composes it.
"""
