"""Example business health plugins; copy one into the ``--plugin-dir`` volume.

Each file is self-contained (standard library only) and follows the Python
plugin interface of :mod:`server_agent.plugins`. This ``__init__`` is skipped
by the loader (its name starts with ``_``).
"""
