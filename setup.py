"""Builds the Cython fast path (cython_ext/) into gateway._fastpath; everything else is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(
                "gateway._fastpath",
                ["cython_ext/fastpath.pyx"],
                extra_compile_args=["-O3"],
            ),
            # NFQUEUE binding for the live daemon (gateway/io/nfqueue.py)
            Extension(
                "gateway._nfq",
                ["cython_ext/nfq.pyx"],
                libraries=["netfilter_queue", "nfnetlink"],
                extra_compile_args=["-O2"],
            ),
        ],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        include_path=["cython_ext"],
    ),
)
