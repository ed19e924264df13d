"""
Shared pytest settings: hypothesis profiles.
"""

from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=False)
settings.load_profile("ci")
