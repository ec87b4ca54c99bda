"""Byte stages applied to every stored part."""
