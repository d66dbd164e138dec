"""Sphinx configuration for juanji's documentation.

Build (from the repository root): ``pip install '.[docs]'`` and then
``sphinx-build -W --keep-going -b html docs docs/_build/html``.

autodoc imports the installed ``juanji``: its numeric core ``juanji._core`` is a compiled
extension, so the package cannot be imported from the source tree. The API pages therefore
describe the juanji that is installed, and the build needs it installed first.
"""

import importlib
import inspect
import re
import types

from sphinx.util import logging

import juanji

project = "juanji"
author = "the juanji authors"
copyright = "2026, the juanji authors"
release = juanji.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = f"juanji {release}"

# Classes take their signature (and any text) from their __init__'s pybind11 docstring too.
autoclass_content = "both"
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}

# pybind11 writes every signature in full: the `self` argument, `object` for an argument that
# takes any Python object, the compiled module's private path and typing's protocols for
# numbers. Shown as a user calls them instead.
SIGNATURE_REWRITES = [
    (re.compile(r"^\(self(: [\w.]+)?(, |(?=\)))"), "("),
    (re.compile(r": object\b"), ""),
    (re.compile(r"\bjuanji\._core\.(nn|optim|data|kernels)\."), r"juanji.\1."),
    (re.compile(r"\bjuanji\._core\."), "juanji."),
    (re.compile(r"(typing\.)?SupportsFloat \| (typing\.)?SupportsIndex"), "float"),
    (re.compile(r"(typing\.)?SupportsInt \| (typing\.)?SupportsIndex"), "int"),
    (re.compile(r"\bcollections\.abc\."), ""),
]


def _rewrite(text):
    for pattern, replacement in SIGNATURE_REWRITES:
        text = pattern.sub(replacement, text)
    return text


def _handwritten_signature(name, obj):
    """The call signature a docstring spells out by hand on its first line of text, as
    ``zeros(*shape, dtype=None, device=None)`` does where pybind11's own says ``*args``."""
    short_name = name.rsplit(".", 1)[-1]
    lines = (getattr(obj, "__doc__", None) or "").split("\n")
    text = [line.strip() for line in lines[1:] if line.strip()]
    if lines[0].startswith(short_name + "(") and text and re.fullmatch(rf"{short_name}(\(.*\))", text[0]):
        return text[0]
    return None


def _tidy_signature(app, what, name, obj, options, signature, return_annotation):
    if signature is None:
        return None
    handwritten = _handwritten_signature(name, obj)
    if handwritten:
        signature = handwritten[handwritten.index("(") :]
    return _rewrite(signature), _rewrite(return_annotation) if return_annotation else return_annotation


def _drop_handwritten_signature(app, what, name, obj, options, lines):
    handwritten = _handwritten_signature(name, obj)
    if handwritten and handwritten in lines:
        lines.remove(handwritten)


# Every public function and class of these modules must be in the API reference: one added to
# the bindings without a line in docs/api/*.rst fails the build (warnings are errors).
DOCUMENTED_MODULES = ("juanji", "juanji._core", "juanji.nn", "juanji.optim", "juanji.kernels",
                      "juanji.data", "juanji.models", "juanji.distributed")


def _public_names(module_name):
    module = importlib.import_module(module_name)
    for name in getattr(module, "__all__", None) or dir(module):
        obj = getattr(module, name, None)
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        defined_elsewhere = (getattr(obj, "__module__", None) or "").split(".")[0] not in ("juanji", "")
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and not defined_elsewhere:
            yield name


def _check_api_coverage(app, env):
    documented = {full_name.rsplit(".", 1)[-1] for full_name in env.domaindata["py"]["objects"]}
    log = logging.getLogger(__name__)
    for module_name in DOCUMENTED_MODULES:
        for name in _public_names(module_name):
            if name not in documented:
                log.warning("%s.%s is not in the API reference: add it to a page in docs/api/",
                            module_name, name)


def _drop_pybind11_base(app, name, obj, options, bases):
    # Every bound class derives from pybind11's internal pybind11_object; it says nothing to a user.
    bases[:] = [base for base in bases if base.__name__ != "pybind11_object"]


def setup(app):
    app.connect("autodoc-process-bases", _drop_pybind11_base)
    app.connect("autodoc-process-signature", _tidy_signature)
    app.connect("autodoc-process-docstring", _drop_handwritten_signature)
    app.connect("env-updated", _check_api_coverage)
