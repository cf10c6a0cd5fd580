"""The one error type for a config that cannot be used (a run's config or a model's config.json);
the message names the file or field."""


class ConfigError(ValueError):
  """A config that cannot be used; the message names the file or field."""
