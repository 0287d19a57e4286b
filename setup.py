"""Only the compiled card parser needs setup.py; everything else is in pyproject.toml.

The extension is optional: where it cannot be built (no C compiler),
archive.headers uses its Python parser (the same answers, three to four
times slower per card).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = cythonize(
    [Extension("archive._cards", ["archive/_cards.pyx"])],
    compiler_directives={"language_level": "3"},
)
for extension in extensions:
    extension.optional = True  # set after cythonize, which does not carry it over

setup(ext_modules=extensions)
