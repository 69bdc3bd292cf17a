"""Sphinx configuration: MyST markdown pages, jupytext tutorials executed by myst-nb, numpy docstrings."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
# tutorials run in Jupyter kernels started from this process: draw figures inline so they reach the pages
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

project = "slt"
author = "slt developers"
copyright = "2026, slt developers"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# ".rst" first: autosummary writes its generated API pages with the first suffix, and they are rst
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".py": "myst-nb"}
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]

autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
# Attributes sections as fields, not attribute entries that autodoc's members would duplicate
napoleon_use_ivar = True

exclude_patterns = ["_build", "_templates", "**/.ipynb_checkpoints", "conf.py"]
templates_path = ["_templates"]
html_theme = "furo"
html_title = "slt"
# "ref.python": a type named in a docstring (such as "chains" in a shape) that matches several attributes
suppress_warnings = ["mystnb.unknown_mime_type", "ref.python"]
