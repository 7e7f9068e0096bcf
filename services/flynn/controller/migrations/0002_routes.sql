-- Routes (issue 6): what the routers serve. The controller owns them; routers load them with
-- GET /routes and follow the `route` events. Ids are answered as "http/UUID" or "tcp/UUID".

CREATE TABLE routes (
    id             uuid PRIMARY KEY,
    type           text NOT NULL CHECK (type IN ('http', 'tcp')),
    app_id         uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    service        text NOT NULL,
    leader         boolean NOT NULL DEFAULT false,
    -- http
    domain         text,
    path           text,
    sticky         boolean NOT NULL DEFAULT false,
    https_redirect boolean NOT NULL DEFAULT false,
    tls_cert       text,           -- PEM chain, leaf first
    tls_key        text,           -- PEM private key (secret: never in events or logs)
    tls_cert_id    text,           -- sha256 (hex) of the leaf certificate's DER
    -- tcp
    port           integer CHECK (port BETWEEN 3000 AND 3500),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (
        (type = 'http' AND domain IS NOT NULL AND path IS NOT NULL AND port IS NULL)
        OR (type = 'tcp' AND port IS NOT NULL AND domain IS NULL AND path IS NULL
            AND tls_cert IS NULL AND NOT sticky AND NOT https_redirect)
    ),
    CHECK ((tls_cert IS NULL) = (tls_key IS NULL) AND (tls_cert IS NULL) = (tls_cert_id IS NULL))
);
CREATE UNIQUE INDEX routes_http_place_idx ON routes (domain, path) WHERE type = 'http';
CREATE UNIQUE INDEX routes_tcp_port_idx ON routes (port) WHERE type = 'tcp';
CREATE INDEX routes_app_idx ON routes (app_id, created_at);
