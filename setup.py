"""Only the compiled card parser needs setup.py; everything else is in pyproject.toml.

The extension is optional: where it cannot be built, archive.headers uses
its Python parser (the same answers, three to four times slower per card).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("archive._cards", ["archive/_cards.pyx"], optional=True)],
        compiler_directives={"language_level": "3"},
    )
)
