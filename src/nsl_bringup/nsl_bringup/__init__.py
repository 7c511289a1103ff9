"""NSL node graphs (one description for launch files and the process runner), launch files, parameter files and the nsl command-line tool."""
