"""xrecon: bone shape and pose from a single X-ray, and CT-to-X-ray registration.

Conventions (camera, frames, units) are written once in :mod:`xrecon.geometry`;
see ``docs/conventions.md``.
"""
__version__ = "0.1.0"
