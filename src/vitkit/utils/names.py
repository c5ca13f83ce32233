"""File names that are not valid UTF-8, made printable (RELIABILITY item 39).

On Linux a file name is bytes; Python decodes the bytes that are not UTF-8 with
``surrogateescape`` (b'caf\\xe9.jpg' -> 'caf\\udce9.jpg'). Such a str cannot be encoded to
UTF-8: printing it to a UTF-8 terminal, writing it to a UTF-8 JSON or CSV file, fails.
vitkit shows and records such names with each undecodable byte as ``\\xNN`` (b'caf\\xe9.jpg'
-> 'caf\\\\xe9.jpg', the form ``os.fsencode(name).decode('utf-8', 'backslashreplace')``
gives); names that are valid UTF-8 are unchanged.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of file names in it (surrogate escapes) as ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes the name had on disk
    except UnicodeEncodeError:  # a lone surrogate that no file name produced: show its code point
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
