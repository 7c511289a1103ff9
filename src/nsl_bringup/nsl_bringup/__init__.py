"""NSL node graphs, launch files, parameter files and the nsl command-line tool.

One graph description serves both the launch files and the process runner.
"""
