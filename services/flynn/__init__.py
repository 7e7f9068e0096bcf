"""Flynn: a self-hosted Heroku-style PaaS built from Python services supervised by systemd."""

from importlib import metadata

try:
    __version__ = metadata.version("flynn")
except metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"
