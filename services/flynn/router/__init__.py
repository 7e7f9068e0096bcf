"""Flynn's router: the HTTP/HTTPS/TCP front door of every host (issue 6), data plane.

The control plane (controller route events, discoverd backend watches) drives a
:class:`~flynn.router.routes.RouteTable`; a :class:`~flynn.router.server.Router` serves it.
See docs/router.md. The data plane's hot modules run compiled (mypyc) when they were built and
are current, else as Python source: :mod:`flynn.router._native` decides, before anything else
of the package is imported.
"""

from flynn.router import _native

_native.activate(__path__)

from flynn.router.config import RouterConfig  # noqa: E402 - after the choice of implementation
from flynn.router.routes import HTTPRoute, RouteTable, TCPRoute  # noqa: E402
from flynn.router.server import Router  # noqa: E402
from flynn.router.tls import CertStore  # noqa: E402

__all__ = ["CertStore", "HTTPRoute", "RouteTable", "Router", "RouterConfig", "TCPRoute"]
