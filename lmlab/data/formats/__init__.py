"""Readers of source formats, one file each: text lines are read by ``prepare``; sentence pairs here."""
