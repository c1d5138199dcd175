"""Value-factorization learners on the shared machinery of ``learners/base.py``."""
