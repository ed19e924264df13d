"""
Packaging for capserv.

The twistd plugin lives in ``twisted_plugins/`` in the source tree and is
installed as ``twisted/plugins/capserv_plugin.py``, next to Twisted's own
plugins, so that ``twistd capserv`` finds it.  Nothing else of Twisted's
namespace is shipped (no ``twisted/__init__.py``, no ``twisted/plugins/__init__.py``).
"""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    namespace: dict = {}
    with open(os.path.join(HERE, "capserv", "_version.py")) as f:
        exec(f.read(), namespace)
    return namespace["__version__"]


with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="capserv",
    version=read_version(),
    description="The uppercase network service of the socket-programming lesson, as a Twisted daemon and library",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # capserv and every subpackage (protocols, native, endpoints, daemon, ...).
    packages=[*find_packages(include=["capserv", "capserv.*"]), "twisted.plugins"],
    package_dir={"twisted.plugins": "twisted_plugins"},
    package_data={"capserv": ["py.typed"]},
    include_package_data=False,
    install_requires=[
        # The oldest Twisted the tox matrix runs against: 23.10.0, and on
        # Python 3.13 24.3.0 (23.10's twisted.web imports cgi, which 3.13
        # removed; --metrics needs twisted.web).
        "Twisted>=23.10.0",
        'Twisted>=24.3.0; python_version >= "3.13"',
        # Python 3.14: older asyncio reactors ask get_event_loop() for a loop
        # when given none (twistd --reactor=asyncio), which 3.14 refuses.
        'Twisted>=26.10.0; python_version >= "3.14"',
        "zope.interface>=5",
        # The event loop under the daemon's reactor: measured faster than
        # Twisted's epoll reactor (docs/benchmarks).  Optional in effect:
        # without it the daemon runs on twistd's default reactor.
        'uvloop>=0.17; sys_platform != "win32" and platform_python_implementation == "CPython"',
    ],
    extras_require={
        # --metrics: prometheus-client's text format, served by capserv's own resource.
        "metrics": ["prometheus-client>=0.17"],
        # TLS listen strings (ssl:) and capserv-client --connect tls:.
        "tls": ["Twisted[tls]>=23.10.0"],
        "test": [
            "pytest>=7.4",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.2",
            "hypothesis>=6.80",
            "trustme>=1.1",
            "prometheus-client>=0.17",
            "Twisted[tls]>=23.10.0",
        ],
    },
    entry_points={"console_scripts": ["capserv-client = capserv.client.command:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Programming Language :: Python :: 3.14",
        "Topic :: Internet",
    ],
    zip_safe=False,
)
