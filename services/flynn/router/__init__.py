"""Flynn's router: the HTTP/HTTPS/TCP front door of every host (issue 6), data plane.

The control plane (controller route events, discoverd backend watches) drives a
:class:`~flynn.router.routes.RouteTable`; a :class:`~flynn.router.server.Router` serves it.
See docs/router.md.
"""

from flynn.router.config import RouterConfig
from flynn.router.routes import HTTPRoute, RouteTable, TCPRoute
from flynn.router.server import Router
from flynn.router.tls import CertStore

__all__ = ["CertStore", "HTTPRoute", "RouteTable", "Router", "RouterConfig", "TCPRoute"]
