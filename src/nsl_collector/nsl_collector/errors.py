"""Errors of the dataset library."""

from __future__ import annotations


class DatasetError(Exception):
    """A dataset path is missing, unreadable, corrupt, or holds no usable data.

    The message always names the file or directory concerned and what is wrong with it.
    """
