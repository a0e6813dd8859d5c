"""The application layer: the one assembly from a config to a ready inversion
(:func:`~hpcinv.app.assembly.build`), the inversion run, the command line, figures and the
self-test. The only code besides :mod:`hpcinv.config` that reads a config."""
