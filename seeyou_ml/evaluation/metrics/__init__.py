"""`evaluate` metric scripts shipped with seeyou-ml, loadable offline with `evaluate.load(<folder>)`."""
