"""Build glue: compile the Cython parts. Metadata lives in pyproject.toml.

`_ratelimit.pyx` is Cython source (its pure-Python twin is `_ratelimit_py.py`). The modules in
COMPILED are plain Python that Cython compiles as they are, with C types for their hot classes
from the `.pxd` next to each, and Python's own semantics (bounds checks, negative indices, division
by zero): the `.py` is the twin the tests run against the compiled one.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

#: the request path's plumbing, compiled from its .py source
COMPILED = ["listener", "upstream_http", "admission", "gate", "upstream", "limiter", "metrics", "cost", "cost_estimate", "cost_query", "cost_aggs", "cost_weights", "cost_observed", "cost_learned", "tenants", "flow", "esapi", "idbinding", "accesslog", "shapes", "opaque"]

setup(
    ext_modules=cythonize(
        [Extension("proxy._ratelimit", ["proxy/_ratelimit.pyx"])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False, "cdivision": True},
    ) + cythonize(
        [Extension(f"proxy.{name}", [f"proxy/{name}.py"]) for name in COMPILED if name != "flow"],
        compiler_directives={"language_level": "3", "annotation_typing": False},
    ) + cythonize(
        # flow's locals take the C types of what they hold (a Trace, a Snapshot) without annotations
        [Extension("proxy.flow", ["proxy/flow.py"])],
        compiler_directives={"language_level": "3", "annotation_typing": False, "infer_types": True},
    ),
)
