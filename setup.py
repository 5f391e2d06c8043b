"""Packaging for greenockam: Ockam-style routed messaging on gevent."""
import os

from setuptools import find_packages, setup

HERE = os.path.abspath(os.path.dirname(__file__))
README = os.path.join(HERE, "README.md")
LONG_DESCRIPTION = ""
if os.path.exists(README):
    with open(README, encoding="utf-8") as f:
        LONG_DESCRIPTION = f.read()

setup(
    name="greenockam",
    version="0.1.0",
    description="Ockam-style routed messaging on gevent",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["greenockam", "greenockam.*"]),
    package_data={"greenockam": ["py.typed"]},  # PEP 561 marker
    zip_safe=False,  # type checkers cannot read py.typed inside a zip
    python_requires=">=3.8",
    install_requires=[
        "loguru",
        # Ranges chosen so every supported CPython gets a binary wheel and
        # never compiles gevent from source:
        # - 24.2.1 is the last gevent that supports 3.8;
        # - 24.11.1 is the first with wheels for 3.13; gevent 26.4-26.7
        #   still allow 3.9 but ship no cp39 wheels (sdist only), so 3.9
        #   stops at 25.x (25.9.1 is its last wheel);
        # - 3.10+ take any release from 24.11.1 on.
        'gevent==24.2.1; python_version < "3.9"',
        'gevent>=24.11.1,<26; python_version == "3.9"',
        'gevent>=24.11.1; python_version >= "3.10"',
        # The secure channel's primitives (X25519, AES-256-GCM, SHA-256, HKDF). 42.0 is the
        # oldest release whose vectors and type hints this project checked; its abi3 wheels
        # install on 3.8-3.13. pip keeps 3.8 on 47.0 (the last release for 3.8, cp38-abi3
        # wheel) by the releases' own python_requires, so one unmarked range fits all.
        "cryptography>=42",
        # Typed messages read Annotated declarations (typing.Annotated is 3.9+).
        'typing_extensions>=4.0; python_version < "3.9"',
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "pytest-timeout"],
    },
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.8",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Programming Language :: Python :: Implementation :: CPython",
        "Topic :: System :: Networking",
        "Typing :: Typed",
    ],
)
