"""Sphinx configuration for the capserv documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from capserv import __version__

project = "capserv"
author = "the capserv developers"
copyright = "2026, the capserv developers"
version = release = __version__

# sphinx.ext.graphviz draws the tutorial's diagrams with Graphviz's ``dot``
# (Debian package graphviz; .ci/run installs it).
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "sphinx.ext.viewcode", "sphinx.ext.graphviz"]
graphviz_output_format = "svg"
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
exclude_patterns = ["_build"]
html_theme = "alabaster"
# No network on the build machines: no intersphinx inventories are fetched.
intersphinx_mapping: dict = {}


def _public_bases(app, name, obj, options, bases):
    """Leave private mixins out of "Bases:": the rendered API names no private class."""
    bases[:] = [base for base in bases if not base.__name__.startswith("_")]


def setup(app):
    app.connect("autodoc-process-bases", _public_bases)
