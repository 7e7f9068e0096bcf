-- The PostgreSQL backend's schema, version 1. Applied once, in one transaction, by postgres.py.

-- One row per stored version. A version being written has path NULL (and is invisible to other
-- sessions anyway, being uncommitted); at commit the path is moved to it and the previous version
-- is marked deleted (path NULL, deleted_at set): its chunks are removed afterwards, in small
-- transactions, by the sweeper of any instance. COLLATE "C": byte order for listings, and
-- `path LIKE 'prefix%'` can use the index.
CREATE TABLE files (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    path       text COLLATE "C" UNIQUE CHECK (octet_length(path) <= 1024),
    size       bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
    sha256     text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    chunk_size integer NOT NULL CHECK (chunk_size > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    CHECK (deleted_at IS NULL OR path IS NULL)
);
CREATE INDEX files_deleted_idx ON files (id) WHERE deleted_at IS NOT NULL;

-- The content, `chunk_size` bytes per row (the last one shorter), numbered from 0.
CREATE TABLE chunks (
    file_id bigint NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    seq     integer NOT NULL CHECK (seq >= 0),
    data    bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);
-- Out of line and uncompressed: blobs are mostly gzip'd already, so compressing costs CPU for
-- nothing, and uncompressed TOAST values can be sliced without reading them whole.
ALTER TABLE chunks ALTER COLUMN data SET STORAGE EXTERNAL;
