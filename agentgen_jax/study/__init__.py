"""The generalisation study: protocols (difficulty, cross_env, sequential, mixture), metrics, failure
modes and reports."""
