"""The shipped run configs: each extends ``jaxdiff.run_config.default_config()`` (or another config here)."""
