"""PostgreSQL for the platform (issue 4): Debian's PostgreSQL 15 run as ``flynn-postgres.service``.

``flynn-postgres prepare`` (ExecStartPre) creates the cluster in the data directory on first start
and (re)writes Flynn's settings; ``flynn-postgres run`` execs the server; ``flynn-postgres setup``
(ExecStartPost) creates each service's role and database and sets their passwords.
"""
