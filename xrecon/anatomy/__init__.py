"""Anatomy: CT volumes with their affine and labels, image I/O, bone models."""
