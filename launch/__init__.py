"""Launcher: run an app with N workers, locally or through mpiexec."""
