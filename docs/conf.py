"""Sphinx configuration: the manual (docs/*.rst, with parts of the README included) and the API reference.

Build (warnings are errors, as in CI):  sphinx-build -W -b html docs docs/_build/html
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # document this checkout, installed or not

import taylor  # noqa: E402

project = "taylor"
author = "the taylor authors"
copyright = "the taylor authors"  # noqa: A001 - the name Sphinx reads
release = taylor.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
exclude_patterns = ["_build"]
html_theme = "alabaster"
