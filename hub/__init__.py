"""Koppeltaal Hub."""
