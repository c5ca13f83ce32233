"""Data: built-in data sets (and, later, image decoding and preprocessing)."""
