"""Configuration: the config model and the YAML source that keeps line numbers for ``file:line`` errors."""
