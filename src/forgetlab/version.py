"""The package version, in a module of its own so that nothing imports the package root
(and with it the whole API) to read it. Run directories record it; a run written by another
major.minor version is refused by the analyses (see `forgetlab.rundir`)."""

__version__ = "0.1.0"
