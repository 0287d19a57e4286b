"""Only the compiled modules (card parser, re-scan) need setup.py; everything else is in pyproject.toml.

The extensions are optional: where they cannot be built (no C compiler),
archive.headers uses its Python parser (the same answers, three to four
times slower per card) and a re-scan stats through os.scandir.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = cythonize(
    [
        Extension("archive._cards", ["archive/_cards.pyx"]),
        Extension("archive._scan", ["archive/_scan.pyx"]),  # a re-scan's unchanged files (POSIX)
    ],
    compiler_directives={"language_level": "3"},
)
for extension in extensions:
    extension.optional = True  # set after cythonize, which does not carry it over

setup(ext_modules=extensions)
