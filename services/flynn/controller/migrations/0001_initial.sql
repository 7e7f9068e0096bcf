-- The controller's schema, version 1. Applied once, in one transaction, by migrate.py.

CREATE TABLE apps (
    id             uuid PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    meta           jsonb NOT NULL DEFAULT '{}',
    strategy       text NOT NULL DEFAULT 'all-at-once' CHECK (strategy IN ('all-at-once', 'one-by-one')),
    deploy_timeout integer NOT NULL DEFAULT 120 CHECK (deploy_timeout BETWEEN 1 AND 3600),
    release_id     uuid,
    system         boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE artifacts (
    id         uuid PRIMARY KEY,
    type       text NOT NULL CHECK (type IN ('tarball')),
    uri        text NOT NULL,
    meta       jsonb NOT NULL DEFAULT '{}',
    size       bigint CHECK (size >= 0),
    sha256     text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE releases (
    id         uuid PRIMARY KEY,
    app_id     uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    env        jsonb NOT NULL DEFAULT '{}',
    meta       jsonb NOT NULL DEFAULT '{}',
    processes  jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX releases_app_idx ON releases (app_id, created_at);

ALTER TABLE apps ADD CONSTRAINT apps_release_fk
    FOREIGN KEY (release_id) REFERENCES releases (id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE release_artifacts (
    release_id  uuid NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
    artifact_id uuid NOT NULL REFERENCES artifacts (id),
    position    integer NOT NULL,
    PRIMARY KEY (release_id, artifact_id)
);
CREATE INDEX release_artifacts_artifact_idx ON release_artifacts (artifact_id);

CREATE TABLE formations (
    app_id     uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    release_id uuid NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
    processes  jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, release_id)
);

CREATE TABLE jobs (
    id          text PRIMARY KEY,
    uuid        uuid NOT NULL,
    host_id     text NOT NULL,
    app_id      uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    release_id  uuid NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
    type        text NOT NULL,
    state       text NOT NULL
                CHECK (state IN ('pending', 'starting', 'up', 'stopping', 'down', 'crashed', 'failed')),
    args        jsonb NOT NULL DEFAULT '[]',
    exit_status integer,
    host_error  text,
    restarts    integer NOT NULL DEFAULT 0,
    meta        jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_app_idx ON jobs (app_id, created_at);
CREATE INDEX jobs_release_idx ON jobs (release_id, type, state);
CREATE INDEX jobs_live_host_idx ON jobs (host_id) WHERE state IN ('pending', 'starting', 'up', 'stopping');

CREATE TABLE deployments (
    id             uuid PRIMARY KEY,
    app_id         uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    old_release_id uuid,
    new_release_id uuid NOT NULL,
    strategy       text NOT NULL,
    status         text NOT NULL CHECK (status IN ('pending', 'running', 'complete', 'failed')),
    error          text,
    processes      jsonb NOT NULL DEFAULT '{}',
    deploy_timeout integer NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    claimed_by     text,
    claimed_at     timestamptz
);
CREATE INDEX deployments_app_idx ON deployments (app_id, created_at);
-- at most one unfinished deployment per app
CREATE UNIQUE INDEX deployments_one_active_idx ON deployments (app_id) WHERE status IN ('pending', 'running');

-- Events: ids are handed out in commit order (the trigger takes a transaction-level advisory lock
-- before taking the id), so a reader that has seen id N and reads "id > N" never misses a row that
-- commits later with a smaller id. Each insert notifies 'controller_events' with the id.
CREATE SEQUENCE events_id_seq;
CREATE TABLE events (
    id          bigint PRIMARY KEY,  -- set by the trigger, never by a writer
    app_id      uuid,
    object_type text NOT NULL,
    object_id   text NOT NULL,
    op          text NOT NULL CHECK (op IN ('create', 'update', 'delete')),
    data        jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER SEQUENCE events_id_seq OWNED BY events.id;
CREATE INDEX events_app_idx ON events (app_id, id);
CREATE INDEX events_type_idx ON events (object_type, id);

CREATE FUNCTION events_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7301000000000001);
    NEW.id := nextval('events_id_seq');
    NEW.created_at := clock_timestamp();
    PERFORM pg_notify('controller_events', NEW.id::text);
    RETURN NEW;
END
$$;
CREATE TRIGGER events_ordered_ids BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_before_insert();

CREATE TABLE keys (
    id          text PRIMARY KEY,
    fingerprint text NOT NULL,
    type        text NOT NULL,
    key         text NOT NULL,
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
