"""jaxdiff's tests: a package, so ``tests.*`` never resolves to another distribution's ``tests``."""
