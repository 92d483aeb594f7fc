"""Package discovery only; all metadata lives in pyproject.toml.

``cli/`` is installed as the subpackage ``xrecon.cli`` so that no bare ``cli``
module lands in site-packages.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["xrecon", "xrecon.*", "shape_models", "shape_models.*"])
packages += ["xrecon.cli"] + ["xrecon.cli." + p for p in find_packages(where="cli")]
setup(packages=packages, package_dir={"xrecon.cli": "cli"})
