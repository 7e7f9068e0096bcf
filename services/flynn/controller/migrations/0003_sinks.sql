-- Log sinks (issue 7): where the log aggregator leader ships every app's lines. Cluster-wide (no
-- app). The url is canonical (syslog://HOST:PORT or syslog+tls://HOST:PORT); ca_cert, when set,
-- is the PEM the sink's TLS certificate is verified against instead of the system CAs.

CREATE TABLE sinks (
    id         uuid PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('syslog')),
    url        text NOT NULL UNIQUE,
    ca_cert    text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (ca_cert IS NULL OR url LIKE 'syslog+tls://%')
);
